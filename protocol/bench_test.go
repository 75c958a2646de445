package protocol_test

import (
	"testing"
	"time"

	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/protocol"
)

// benchBatch is n readings of the air conditioner's power stream, an hour
// apart, as the enforcer lets them leave.
func benchBatch(b *testing.B, f *fixture, n int) protocol.Batch {
	batch := protocol.Batch{Manifest: f.airconHash, Stream: "power", Key: goldenKey}
	for i := range n {
		batch.Readings = append(batch.Readings, apply(b, f.airconE, "power", policy.Reading{
			"ts": goldenTime.Add(time.Duration(i) * time.Hour), "watts": 1000 + float64(i%50)*10, "serial": "SN-0042"}))
	}
	return batch
}

// BenchmarkBatchCBOR encodes and decodes a batch of 100 readings, and
// reports the bytes a reading takes on the wire.
func BenchmarkBatchCBOR(b *testing.B) {
	f := newFixture(b)
	batch := benchBatch(b, f, 100)
	data, err := batch.MarshalCBOR()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		data, _ = batch.MarshalCBOR()
		if _, err := protocol.DecodeBatch(data, f.reg); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(data))/100, "bytes/reading")
}

// BenchmarkBatchSenML is BenchmarkBatchCBOR for SenML-CBOR.
func BenchmarkBatchSenML(b *testing.B) {
	f := newFixture(b)
	batch := benchBatch(b, f, 100)
	q, data, err := batch.MarshalSenML(f.aircon)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		q, data, _ = batch.MarshalSenML(f.aircon)
		if _, err := protocol.DecodeSenML(q, data, f.reg); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(data))/100, "bytes/reading")
}
