package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sensible-iot/sensible/consent/policy"
)

// A jsonReading is a reading as an MQTT device publishes it: the same
// fields as the batch's, the time as Unix seconds.
type jsonReading struct {
	TS     int64   `json:"ts"`
	Watts  float64 `json:"watts"`
	Serial string  `json:"serial"`
}

// jsonBatch is several readings in one message.
type jsonBatch struct {
	Readings []jsonReading `json:"readings"`
}

func toJSON(r policy.Reading) jsonReading {
	ts, _ := r["ts"].(time.Time)
	w, _ := r["watts"].(float64)
	s, _ := r["serial"].(string)
	return jsonReading{TS: ts.Unix(), Watts: w, Serial: s}
}

// mqttRun is one run against an MQTT broker.
type mqttRun struct {
	opts    options
	devices []*device
	clients []mqtt.Client
}

// setup makes the devices and connects one MQTT 3.1.1 client for each,
// with a clean session: a device that only publishes keeps no session.
func (r *mqttRun) setup(ctx context.Context) error {
	m, err := policy.Parse(manifestJSON)
	if err != nil {
		return err
	}
	if r.devices, err = newDevices(m, r.opts.devices, time.Now()); err != nil {
		return err
	}
	r.clients = make([]mqtt.Client, len(r.devices))
	return each(len(r.devices), func(i int) error {
		o := mqtt.NewClientOptions().
			AddBroker("tcp://" + r.opts.mqttAddr).
			SetClientID(r.devices[i].id.String()).
			SetProtocolVersion(4).
			SetCleanSession(true).
			SetAutoReconnect(false).
			SetConnectRetry(false).
			SetConnectTimeout(30 * time.Second).
			SetKeepAlive(60 * time.Second)
		c := mqtt.NewClient(o)
		t := c.Connect()
		if !t.WaitTimeout(30 * time.Second) {
			return errors.New("MQTT connect timed out")
		}
		if err := t.Error(); err != nil {
			return fmt.Errorf("MQTT connect to %s: %w", r.opts.mqttAddr, err)
		}
		r.clients[i] = c
		return nil
	})
}

func (r *mqttRun) close() {
	for _, c := range r.clients {
		if c != nil {
			c.Disconnect(100)
		}
	}
}

// publish publishes message seq of device i at QoS 1 and waits for its
// PUBACK: one reading, or with -mqtt-batch a batch of readings in one
// JSON message. It returns the readings the message carried.
func (r *mqttRun) publish(i int, seq uint64) (int, error) {
	d := r.devices[i]
	var payload []byte
	var err error
	n := 1
	if r.opts.mqttBatch {
		n = r.opts.batch
		b := jsonBatch{Readings: make([]jsonReading, n)}
		for j := range b.Readings {
			b.Readings[j] = toJSON(d.reading(seq*uint64(n) + uint64(j)))
		}
		payload, err = json.Marshal(b)
	} else {
		payload, err = json.Marshal(toJSON(d.reading(seq)))
	}
	if err != nil {
		return 0, err
	}
	t := r.clients[i].Publish("devices/"+r.devices[i].id.String()+"/telemetry", 1, false, payload)
	if !t.WaitTimeout(30 * time.Second) {
		return 0, errors.New("no PUBACK within 30 s")
	}
	return n, t.Error()
}

// run measures the broker: after one message from each device, every
// device publishes back to back, waiting for each PUBACK, until the
// duration is over or it has published -batches messages.
func (r *mqttRun) run(ctx context.Context, brokerPID int) (result, error) {
	if err := r.setup(ctx); err != nil {
		return result{}, err
	}
	if err := each(len(r.devices), func(i int) error { _, err := r.publish(i, 0); return err }); err != nil {
		return result{}, fmt.Errorf("first messages: %w", err)
	}
	perMessage := 1
	if r.opts.mqttBatch {
		perMessage = r.opts.batch
	}
	res := result{System: "mosquitto", Store: "memory", Devices: r.opts.devices, Batch: perMessage, LoadBefore: loadAverage()}
	lat := make([]latencies, len(r.devices))
	sent := make([]uint64, len(r.devices))
	var failed atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(r.opts.duration)
	cpu, err := startCPU(brokerPID, r.opts.cpuProfile)
	if err != nil {
		return result{}, err
	}
	start := time.Now()
	each(len(r.devices), func(i int) error {
		l := make(latencies, 0, 16384)
		for seq := uint64(1); ; seq++ {
			if r.opts.batches > 0 && seq > uint64(r.opts.batches) {
				break
			}
			if ctx.Err() != nil || (r.opts.batches == 0 && !time.Now().Before(deadline)) {
				break
			}
			t0 := time.Now()
			if _, err := r.publish(i, seq); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				continue
			}
			l = append(l, time.Since(t0))
			sent[i]++
		}
		lat[i] = l
		return nil
	})
	elapsed := time.Since(start)
	self, other := cpu.stop()
	res.LoadAfter = loadAverage()
	var messages uint64
	for _, n := range sent {
		messages += n
	}
	res.fill(elapsed, messages, messages*uint64(perMessage), merge(lat), self, other)
	res.Errors = failed.Load()
	if e, ok := firstErr.Load().(string); ok {
		res.FirstError = e
	}
	return res, nil
}

// each runs fn(0) to fn(n-1) at once and waits for all of them.
func each(n int, fn func(i int) error) error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
