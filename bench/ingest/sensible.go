package main

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sensible-iot/sensible/cloud"
	"github.com/sensible-iot/sensible/cloud/store"
	"github.com/sensible-iot/sensible/cloud/store/postgres"
	"github.com/sensible-iot/sensible/cloud/store/sqlite"
	"github.com/sensible-iot/sensible/cloud/store/sqlstore"
	"github.com/sensible-iot/sensible/consent"
	"github.com/sensible-iot/sensible/consent/policy"
	"github.com/sensible-iot/sensible/device/identity"
	"github.com/sensible-iot/sensible/protocol"
	"github.com/sensible-iot/sensible/transport"
)

// manifestJSON is the benchmark model's manifest: one stream of three
// fields, each transformed on the device, that needs the owner's consent
// for analytics.
//
//go:embed meter.json
var manifestJSON []byte

// stream is the manifest's stream that the devices post.
const stream = "power"

// purpose is the consent purpose the stream needs.
const purpose = "analytics"

// poolSize is how many distinct values each device cycles through.
const poolSize = 64

// history is how far back a device's first reading is: its readings
// follow one a second from there, so that their times only grow, as a
// meter's do, and stay within the owner's consent (given 48 hours ago)
// and before now.
const history = 40 * time.Hour

// fleetSecret derives the devices' DTLS pre-shared keys.
var fleetSecret = []byte("the fleet secret of the benchmark factory")

// A device is one benchmark device: its identity, and the readings it
// sends as its agent's policy.Enforcer lets them leave.
type device struct {
	key   crypto.Signer
	id    identity.ID
	owner string
	// first is the time of its first reading.
	first time.Time
	// bucket is the stream's coarsen_time bucket.
	bucket time.Duration
	// pool holds the values of the readings' other fields, as the
	// enforcer transformed them.
	pool []policy.Reading
}

// newDevices makes n devices of manifest m, whose readings start
// history before now.
func newDevices(m *policy.Manifest, n int, now time.Time) ([]*device, error) {
	s, ok := m.Stream(stream)
	if !ok {
		return nil, fmt.Errorf("the manifest has no stream %q", stream)
	}
	var bucket time.Duration
	for _, f := range s.Fields {
		if f.Name == "ts" && f.Transform.Op == "coarsen_time" {
			bucket = time.Duration(f.Transform.Bucket)
		}
	}
	if bucket <= 0 {
		return nil, errors.New("the stream's ts field is not coarsened to a bucket")
	}
	ds := make([]*device, n)
	for i := range ds {
		k, err := identity.GenerateKey(identity.P256)
		if err != nil {
			return nil, err
		}
		id, err := identity.IDFromPublicKey(k.Public())
		if err != nil {
			return nil, err
		}
		enf, err := policy.NewEnforcer(m, id.String(), []byte(fmt.Sprintf("pseudonym secret of device %d", i)))
		if err != nil {
			return nil, err
		}
		d := &device{key: k, id: id, owner: fmt.Sprintf("subj-bench-%04d", i), first: now.Add(-history), bucket: bucket}
		for j := range poolSize {
			at := d.first.Add(time.Duration(j) * time.Second)
			raw := policy.Reading{
				"ts":     at,
				"watts":  900 + float64((i*31+j*17)%600) + 0.37,
				"serial": fmt.Sprintf("SN-%06d", i),
			}
			out, err := enf.Apply(stream, raw)
			if err != nil {
				return nil, err
			}
			if out == nil {
				return nil, errors.New("the enforcer let nothing of a reading leave")
			}
			// The loop makes each reading's time as the enforcer does
			// (coarsen_time), rather than running the enforcer on every
			// reading: on both sides of the comparison, the devices'
			// work stays out of the way of the servers'.
			if ts, _ := out.Fields["ts"].(time.Time); !ts.Equal(at.Truncate(bucket)) {
				return nil, fmt.Errorf("the enforcer made the time %v of %v, not %v", ts, at, at.Truncate(bucket))
			}
			delete(out.Fields, "ts")
			d.pool = append(d.pool, out.Fields)
		}
		ds[i] = d
	}
	return ds, nil
}

// reading returns d's n-th reading (from 0), taken n seconds after its
// first, as its enforcer lets it leave: the time coarsened to the
// minute, the watts rounded, the serial number pseudonymized.
func (d *device) reading(n uint64) policy.Reading {
	n %= uint64(history / time.Second)
	p := d.pool[n%poolSize]
	return policy.Reading{
		"ts":     d.first.Add(time.Duration(n) * time.Second).Truncate(d.bucket).UTC(),
		"watts":  p["watts"],
		"serial": p["serial"],
	}
}

// readings returns the readings of d's batch seq (from 1) of b readings.
func (d *device) readings(seq uint64, b int) []policy.Reading {
	rs := make([]policy.Reading, b)
	for i := range rs {
		rs[i] = d.reading((seq-1)*uint64(b) + uint64(i))
	}
	return rs
}

// storeKind names the node's store.
type storeKind string

const (
	sqliteStore   storeKind = "sqlite"
	postgresStore storeKind = "postgres"
)

// openStore opens an empty store of kind. For PostgreSQL it makes a new
// database on the server that adminURL names, dropped by cleanup, and
// opens it with at most conns connections; idle, if not zero, replaces
// database/sql's default of 2 idle connections kept in the pool.
func openStore(ctx context.Context, kind storeKind, dir, adminURL string, conns, idle int) (st *sqlstore.Store, cleanup func() error, err error) {
	switch kind {
	case sqliteStore:
		st, err = sqlite.Open(ctx, dir, sqlite.Config{})
		return st, func() error { return nil }, err
	case postgresStore:
		if adminURL == "" {
			return nil, nil, errors.New("-store postgres needs -postgres URL")
		}
		u, err := url.Parse(adminURL)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			return nil, nil, errors.New("-postgres is not a postgres:// URL")
		}
		admin, err := pgx.Connect(ctx, adminURL)
		if err != nil {
			return nil, nil, fmt.Errorf("connecting to %s: %w", u.Redacted(), err)
		}
		name := fmt.Sprintf("bench_ingest_%d_%d", os.Getpid(), time.Now().UnixNano())
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
			admin.Close(ctx)
			return nil, nil, err
		}
		drop := func() error {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			return errors.Join(err, admin.Close(ctx))
		}
		db := *u
		db.Path = "/" + name
		st, err = postgres.Open(ctx, db.String(), postgres.Config{MaxConns: conns, MaxIdleConns: idle})
		if err != nil {
			return nil, nil, errors.Join(err, drop())
		}
		return st, drop, nil
	}
	return nil, nil, fmt.Errorf("unknown store %q", kind)
}

// sensibleRun is one run against a cloud node.
type sensibleRun struct {
	opts    options
	st      *sqlstore.Store
	node    *cloud.Node
	url     string
	hash    protocol.Hash
	devices []*device
	clients []*transport.Client
}

// setup starts the node on st, registers the model and its manifest as
// the maker signed it, imports the devices, gives each owner's consent
// from the owner's app, and connects every device over coaps:// with
// DTLS-PSK.
func (r *sensibleRun) setup(ctx context.Context) error {
	m, err := policy.Parse(manifestJSON)
	if err != nil {
		return err
	}
	_, maker, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	r.node, err = cloud.New(ctx, cloud.Config{
		Store:       r.st,
		Controllers: []consent.TrustedKey{{KID: []byte("maker-1"), Key: maker.Public(), Role: consent.ControllerKey}},
		FleetSecret: fleetSecret,
		Transport: transport.ServerConfig{
			// The default allows each device 50 requests a second, far
			// above what a real device sends but below what one device
			// posting back to back does. A limit no device reaches keeps
			// the limiter on every request, as in production.
			RateLimit: transport.RateLimit{PerSecond: 1e6, Burst: 1e6},
		},
	})
	if err != nil {
		return err
	}
	if r.url, err = r.node.Listen("coaps://127.0.0.1:0"); err != nil {
		return err
	}
	if err := r.st.AddModel(ctx, store.Model{ID: m.Product, Name: "benchmark meter"}); err != nil {
		return err
	}
	signed, err := m.Sign(maker, []byte("maker-1"))
	if err != nil {
		return err
	}
	if r.hash, err = r.node.AddManifest(ctx, signed); err != nil {
		return err
	}
	now := time.Now()
	if r.devices, err = newDevices(m, r.opts.devices, now); err != nil {
		return err
	}
	notice := consent.Notice{ID: "energy", Version: 1, Language: "en-GB", Hash: consent.HashText([]byte("We use your meter's power readings to ..."))}
	for i, d := range r.devices {
		if _, err := r.node.ImportDevice(ctx, cloud.ImportedDevice{Key: d.key.Public(), Model: m.Product}); err != nil {
			return err
		}
		if err := r.st.SetOwner(ctx, d.id, d.owner); err != nil {
			return err
		}
		pub, app, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return err
		}
		kid := []byte(fmt.Sprintf("app-%d", i))
		if err := r.st.AddAppKey(ctx, store.AppKey{KID: kid, Subject: d.owner, PublicKey: der, Added: now.Add(-72 * time.Hour)}); err != nil {
			return err
		}
		rec := consent.Grant(consent.GrantParams{
			Subject: d.owner, Controller: "bench", Notice: notice, At: now.Add(-48 * time.Hour), Actor: "subject:app",
			Processes: []consent.Process{{Purpose: purpose, Categories: []string{"device.usage", "device.sensor.power", "device.identifier"}, LegalBasis: "consent"}},
		})
		sr, err := consent.Sign(rec, app, kid)
		if err != nil {
			return err
		}
		if _, err := r.node.AddConsent(ctx, sr); err != nil {
			return err
		}
	}
	return r.dial(ctx)
}

// dial connects every device, a few handshakes at a time.
func (r *sensibleRun) dial(ctx context.Context) error {
	r.clients = make([]*transport.Client, len(r.devices))
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	errs := make([]error, len(r.devices))
	for i, d := range r.devices {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			psk, err := transport.DerivePSK(fleetSecret, d.id)
			if err != nil {
				errs[i] = err
				return
			}
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			r.clients[i], errs[i] = transport.Dial(ctx, r.url, transport.ClientConfig{PSK: psk, Device: d.id})
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// close closes the clients and the node.
func (r *sensibleRun) close() error {
	var errs []error
	for _, c := range r.clients {
		if c != nil {
			errs = append(errs, c.Close())
		}
	}
	if r.node != nil {
		errs = append(errs, r.node.Close())
	}
	return errors.Join(errs...)
}

// epoch is the outbox epoch of every device in a run.
func epoch() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:]) | 1
}

// post sends batch seq of device i and checks its ack.
func (r *sensibleRun) post(ctx context.Context, i int, ep, seq uint64) error {
	d := r.devices[i]
	b := protocol.Batch{Manifest: r.hash, Stream: stream, Key: protocol.Key{Epoch: ep, Seq: seq}, Readings: d.readings(seq, r.opts.batch)}
	var ack protocol.Ack
	if err := r.clients[i].Post(ctx, protocol.TelemetryPath, b, &ack); err != nil {
		return err
	}
	if ack.Key != b.Key || ack.Stored != uint64(len(b.Readings)) || ack.Duplicate {
		return fmt.Errorf("unexpected ack %+v for batch %+v", ack, b.Key)
	}
	return nil
}

// run measures the node: after one batch from each device (which also
// fills the node's caches), every device posts batches back to back,
// waiting for each ack, until the duration is over or it has posted
// -batches; then it checks that the store holds every reading acked.
func (r *sensibleRun) run(ctx context.Context, otherPID int) (result, error) {
	if err := r.setup(ctx); err != nil {
		return result{}, err
	}
	ep := epoch()
	if err := each(len(r.devices), func(i int) error { return r.post(ctx, i, ep, 1) }); err != nil {
		return result{}, fmt.Errorf("first batches: %w", err)
	}

	storeName := string(r.opts.store)
	if r.opts.store == postgresStore && r.opts.pgIdle > 0 {
		storeName = fmt.Sprintf("postgres, %d idle conns", r.opts.pgIdle)
	}
	res := result{System: "sensible", Store: storeName, Devices: r.opts.devices, Batch: r.opts.batch, LoadBefore: loadAverage()}
	lat := make([]latencies, len(r.devices))
	acked := make([]uint64, len(r.devices)) // batches acked per device, the first not counted
	var failed atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(r.opts.duration)
	cpu, err := startCPU(otherPID, r.opts.cpuProfile)
	if err != nil {
		return result{}, err
	}
	start := time.Now()
	each(len(r.devices), func(i int) error {
		l := make(latencies, 0, 4096)
		for seq := uint64(2); ; seq++ {
			if r.opts.batches > 0 && seq > uint64(r.opts.batches)+1 {
				break
			}
			if ctx.Err() != nil || (r.opts.batches == 0 && !time.Now().Before(deadline)) {
				break
			}
			t0 := time.Now()
			err := r.post(ctx, i, ep, seq)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				continue
			}
			l = append(l, time.Since(t0))
			acked[i]++
		}
		lat[i] = l
		return nil
	})
	elapsed := time.Since(start)
	self, other := cpu.stop()
	res.LoadAfter = loadAverage()

	var batches uint64
	for _, n := range acked {
		batches += n
	}
	res.fill(elapsed, batches, uint64(r.opts.batch)*batches, merge(lat), self, other)
	res.Errors = failed.Load()
	if e, ok := firstErr.Load().(string); ok {
		res.FirstError = e
	}

	// Acknowledged means durable: the store holds every reading acked,
	// the first batches' too.
	var stored int64
	if err := r.st.DB().QueryRowContext(ctx, `SELECT count(*) FROM readings`).Scan(&stored); err != nil {
		return res, err
	}
	if want := int64(uint64(r.opts.batch) * (batches + uint64(len(r.devices)))); stored != want {
		return res, fmt.Errorf("the store holds %d readings, %d were acknowledged", stored, want)
	}
	return res, nil
}
