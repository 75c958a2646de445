package transport

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp"
)

// TestResponseETag: a handler's Response.ETag travels as the answer's
// ETag option; a GET naming the current ETag gets 2.03 Valid without the
// body, and one naming another gets the body again.
func TestResponseETag(t *testing.T) {
	f := newFixture(t, "coap", ServerConfig{})
	etag := []byte{0xca, 0xfe, 0x01}
	must(t, f.srv.Handle(Resource{Path: "/v1/doc", Public: true, Handler: func(ctx context.Context, r *Request) (any, error) {
		return &Response{Body: "the document", ETag: etag}, nil
	}}))
	conn, err := udp.Dial(hostPort(t, f.url))
	must(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	resp, err := conn.Get(ctx, "/v1/doc")
	must(t, err)
	got, err := resp.Options().GetBytes(message.ETag)
	if resp.Code() != codes.Content || err != nil || !bytes.Equal(got, etag) {
		t.Fatalf("first GET: %v, ETag %x (%v)", resp.Code(), got, err)
	}
	if body, _ := resp.ReadBody(); len(body) == 0 {
		t.Fatal("first GET without a body")
	}

	resp, err = conn.Get(ctx, "/v1/doc", message.Option{ID: message.ETag, Value: etag})
	must(t, err)
	if body, _ := resp.ReadBody(); resp.Code() != codes.Valid || len(body) != 0 {
		t.Fatalf("GET with the current ETag: %v with %d bytes, want 2.03 Valid and none", resp.Code(), len(body))
	}

	resp, err = conn.Get(ctx, "/v1/doc", message.Option{ID: message.ETag, Value: []byte{1}})
	must(t, err)
	if body, _ := resp.ReadBody(); resp.Code() != codes.Content || len(body) == 0 {
		t.Fatalf("GET with an old ETag: %v with %d bytes, want 2.05 with the body", resp.Code(), len(body))
	}
}

// TestGetIfChanged: the client names the ETag it holds, and is told 2.03
// (changed false, out untouched) while it is current, the new value and
// its ETag once it is not; over UDP, DTLS and TCP.
func TestGetIfChanged(t *testing.T) {
	for _, scheme := range []string{"coap", "coaps", "coap+tcp"} {
		t.Run(scheme, func(t *testing.T) {
			f := newFixture(t, scheme, ServerConfig{})
			var version atomic.Uint32
			version.Store(1)
			must(t, f.srv.Handle(Resource{Path: "/v1/doc", Handler: func(ctx context.Context, r *Request) (any, error) {
				v := byte(version.Load())
				return &Response{Body: fmt.Sprintf("version %d", v), ETag: []byte{v}}, nil
			}}))
			c, err := Dial(ctx5(t), f.url, f.config(t, true))
			must(t, err)
			defer c.Close()
			var doc string
			changed, etag, err := c.GetIfChanged(ctx5(t), "/v1/doc", nil, &doc)
			must(t, err)
			if !changed || doc != "version 1" || !bytes.Equal(etag, []byte{1}) {
				t.Fatalf("first GET: changed %v, %q, ETag %x", changed, doc, etag)
			}
			doc = ""
			changed, etag, err = c.GetIfChanged(ctx5(t), "/v1/doc", etag, &doc)
			must(t, err)
			if changed || doc != "" || !bytes.Equal(etag, []byte{1}) {
				t.Fatalf("GET with the current ETag: changed %v, %q, ETag %x", changed, doc, etag)
			}
			version.Store(2)
			changed, etag, err = c.GetIfChanged(ctx5(t), "/v1/doc", etag, &doc)
			must(t, err)
			if !changed || doc != "version 2" || !bytes.Equal(etag, []byte{2}) {
				t.Fatalf("GET after a change: changed %v, %q, ETag %x", changed, doc, etag)
			}
		})
	}
}
