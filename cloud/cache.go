package cloud

import (
	"container/list"
	"sync"
)

// A bounded is a map of at most max entries that forgets the one used
// least recently to make room. It is safe for concurrent use.
type bounded[K comparable, V any] struct {
	max int

	mu    sync.Mutex
	items map[K]*list.Element // of *boundedItem[K, V]
	order list.List           // most recently used first
}

type boundedItem[K comparable, V any] struct {
	key K
	val V
}

func newBounded[K comparable, V any](max int) *bounded[K, V] {
	return &bounded[K, V]{max: max, items: make(map[K]*list.Element)}
}

// get returns the value of key, if it is held.
func (b *bounded[K, V]) get(key K) (V, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.items[key]
	if !ok {
		var zero V
		return zero, false
	}
	b.order.MoveToFront(e)
	return e.Value.(*boundedItem[K, V]).val, true
}

// add holds val under key unless a value is held there already, and
// returns the value held.
func (b *bounded[K, V]) add(key K, val V) V {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e, ok := b.items[key]; ok {
		b.order.MoveToFront(e)
		return e.Value.(*boundedItem[K, V]).val
	}
	b.items[key] = b.order.PushFront(&boundedItem[K, V]{key, val})
	for b.order.Len() > b.max {
		last := b.order.Back()
		b.order.Remove(last)
		delete(b.items, last.Value.(*boundedItem[K, V]).key)
	}
	return val
}
