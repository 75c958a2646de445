package transport

import (
	"bytes"
	"context"
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
