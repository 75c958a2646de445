package codec_test

import (
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/sensible-iot/sensible/internal/codec"
)

func ExampleMarshal() {
	// Keys sort bytewise by their encoding, whatever the map's order:
	// integers before text, shorter text before longer.
	b, err := codec.Marshal(map[any]any{"unit": "Cel", "v": 21.5, 1: true, -1: "x"})
	if err != nil {
		panic(err)
	}
	fmt.Println(hex.EncodeToString(b))
	// Output: a401f52061786176f94d6064756e69746343656c
}

func ExampleDecoder() {
	// One decoder per purpose, built once: here for small command bodies.
	commands, err := codec.NewDecoder(codec.Limits{MaxBody: 1024, MaxMap: 16})
	if err != nil {
		panic(err)
	}

	var cmd map[string]int
	err = commands.Unmarshal([]byte{0xa2, 0x61, 't', 0x01, 0x61, 't', 0x02}, &cmd) // {"t": 1, "t": 2}
	fmt.Println(errors.Is(err, codec.ErrDuplicateKey))
	fmt.Println(err)
	// Output:
	// true
	// codec: duplicate map key
}
