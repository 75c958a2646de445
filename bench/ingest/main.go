// Command ingest measures how many readings a second reach durable
// storage through a Sensible cloud node, and, for comparison, how many a
// second Mosquitto acknowledges at MQTT QoS 1 (tracker issue 11).
//
// With -system sensible it starts, in this one process, a cloud.Node on
// SQLite in a temporary directory (or on a new database of the
// PostgreSQL server that -postgres names), registers a model and a
// manifest its maker signed, whose stream needs the owner's consent,
// imports -devices devices, gives each owner's consent from the owner's
// app, and connects each device over coaps:// with DTLS-PSK. Each device
// then posts batches of -batch readings (protocol.Batch with an
// idempotency key, CBOR, its readings passed through the device's
// policy.Enforcer) back to back, one at a time, for -duration. Every
// batch is checked by the node against the manifest and against the
// owner's consent for every reading, and acknowledged once its
// transaction is on disk; at the end the program checks that the store
// holds every reading acknowledged.
//
// With -system mosquitto it connects -devices MQTT 3.1.1 clients
// (github.com/eclipse/paho.mqtt.golang) to the broker at -mqtt, and each
// publishes the same readings as JSON at QoS 1, one reading per message
// (or, with -mqtt-batch, -batch readings in one message), waiting for
// each PUBACK before the next.
//
// Each run prints one line, and with -out appends it as JSON to a file;
// -report prints the runs of such a file as a Markdown table. bench/run.sh
// runs every combination.
//
// # What is measured
//
// Readings a second: readings acknowledged (2.04 with an Ack, or PUBACK)
// during the run, over the run's wall time. Latency: from sending a
// batch (or message) to its acknowledgement, p50 and p99 over all of
// them. CPU per reading: the user and system CPU time of this process
// (getrusage) during the run, plus that of the broker (-mqtt-pid) or the
// PostgreSQL server and its backends (-postgres-pid), read from
// /proc/<pid>/stat, over the readings acknowledged. The devices run in
// this process too: the CPU of this process is the node's and the
// devices' together (DTLS, CBOR or JSON encoding, the MQTT client
// library), so neither side's CPU is the server's alone.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"
)

// options are the command's flags.
type options struct {
	system      string
	store       storeKind
	dir         string
	postgresURL string
	postgresPID int
	pgConns     int
	pgIdle      int
	devices     int
	batch       int
	duration    time.Duration
	batches     int
	mqttAddr    string
	mqttPID     int
	mqttBatch   bool
	out         string
	report      string
	cpuProfile  string
}

func main() {
	var o options
	var storeName string
	flag.StringVar(&o.system, "system", "sensible", "what to measure: sensible (a cloud node over coaps://) or mosquitto (an MQTT broker at -mqtt)")
	flag.StringVar(&storeName, "store", "sqlite", "the node's store: sqlite or postgres")
	flag.StringVar(&o.dir, "dir", "", "directory for the SQLite store (default: a new directory in $TMPDIR or else /var/tmp, removed afterwards); keep it on a disk, not tmpfs")
	flag.StringVar(&o.postgresURL, "postgres", "", "postgres:// URL of a PostgreSQL server whose user may create databases; each run makes a new database and drops it")
	flag.IntVar(&o.postgresPID, "postgres-pid", 0, "pid of the PostgreSQL server (postmaster), to count its CPU and its backends'")
	flag.IntVar(&o.pgConns, "pg-conns", 16, "most connections the node opens to PostgreSQL")
	flag.IntVar(&o.pgIdle, "pg-idle", 0, "idle PostgreSQL connections the node's pool keeps (postgres.Config.MaxIdleConns); 0 means the store's default, postgres.DefaultMaxIdleConns")
	flag.IntVar(&o.devices, "devices", 16, "number of devices, each with its own connection")
	flag.IntVar(&o.batch, "batch", 64, "readings per batch (with -system mosquitto, per message if -mqtt-batch)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "how long the devices post")
	flag.IntVar(&o.batches, "batches", 0, "if set, each device posts this many batches (or messages) instead of posting for -duration")
	flag.StringVar(&o.mqttAddr, "mqtt", "127.0.0.1:1883", "host:port of the MQTT broker")
	flag.IntVar(&o.mqttPID, "mqtt-pid", 0, "pid of the broker, to count its CPU (default: the one process named mosquitto, if there is one)")
	flag.BoolVar(&o.mqttBatch, "mqtt-batch", false, "publish -batch readings in one JSON message instead of one reading per message")
	flag.StringVar(&o.out, "out", "", "append the result to this file as one JSON line")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the measured part of the run to this file")
	flag.StringVar(&o.report, "report", "", "print the results in this file (written with -out) as a Markdown table, and exit")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: ingest [flags]\n\n"+
			"Measures durable, authenticated, manifest- and consent-checked readings per second into a\n"+
			"Sensible cloud node over coaps:// with DTLS-PSK, or readings per second that an MQTT broker\n"+
			"acknowledges at QoS 1. bench/run.sh runs every combination.\n\nflags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	o.store = storeKind(storeName)

	if o.report != "" {
		if err := report(os.Stdout, o.report); err != nil {
			fmt.Fprintln(os.Stderr, "ingest:", err)
			os.Exit(1)
		}
		return
	}
	if o.devices < 1 || o.batch < 1 || (o.duration <= 0 && o.batches <= 0) {
		fmt.Fprintln(os.Stderr, "ingest: -devices and -batch must be at least 1, and -duration or -batches positive")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	res, err := measure(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ingest:", err)
		os.Exit(1)
	}
	fmt.Println(res.line())
	if o.out != "" {
		if err := res.append(o.out); err != nil {
			fmt.Fprintln(os.Stderr, "ingest:", err)
			os.Exit(1)
		}
	}
}

// measure runs one measurement.
func measure(ctx context.Context, o options) (result, error) {
	switch o.system {
	case "sensible":
		dir := o.dir
		if dir == "" && o.store == sqliteStore {
			// Not os.TempDir: /tmp is often a tmpfs, where a sync
			// costs nothing and proves nothing.
			base := os.Getenv("TMPDIR")
			if base == "" {
				base = "/var/tmp"
			}
			d, err := os.MkdirTemp(base, "bench-ingest-")
			if err != nil {
				return result{}, err
			}
			defer os.RemoveAll(d)
			dir = d
		}
		st, cleanup, err := openStore(ctx, o.store, dir, o.postgresURL, o.pgConns, o.pgIdle)
		if err != nil {
			return result{}, err
		}
		r := &sensibleRun{opts: o, st: st}
		res, err := r.run(ctx, o.postgresPID)
		err = errors.Join(err, r.close(), st.Close(), cleanup())
		return res, err
	case "mosquitto":
		pid := o.mqttPID
		if pid == 0 {
			pid = findProcess("mosquitto")
		}
		r := &mqttRun{opts: o}
		defer r.close()
		return r.run(ctx, pid)
	}
	return result{}, fmt.Errorf("unknown -system %q", o.system)
}

// A result is one run's measurement.
type result struct {
	System  string `json:"system"` // sensible or mosquitto
	Store   string `json:"store"`  // sqlite, postgres; memory for the broker
	Devices int    `json:"devices"`
	Batch   int    `json:"batch"` // readings per batch or message

	Seconds        float64 `json:"seconds"`
	Messages       uint64  `json:"messages"` // batches or MQTT messages acknowledged
	Readings       uint64  `json:"readings"`
	ReadingsPerSec float64 `json:"readings_per_sec"`
	MessagesPerSec float64 `json:"messages_per_sec"`
	P50us          float64 `json:"p50_us"`
	P99us          float64 `json:"p99_us"`
	// CPUSelfUs is this process's CPU per reading, in microseconds.
	CPUSelfUs float64 `json:"cpu_self_us"`
	// CPUOtherUs is the broker's or the database server's CPU per
	// reading; negative when there is none or it was not measured.
	CPUOtherUs float64 `json:"cpu_other_us"`
	Errors     int64   `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
	LoadBefore string  `json:"load_before"` // 1-minute load average
	LoadAfter  string  `json:"load_after"`
}

// fill sets the rates, latencies and CPU from what a run counted.
func (r *result) fill(elapsed time.Duration, messages, readings uint64, sorted []time.Duration, self, other time.Duration) {
	r.Seconds = elapsed.Seconds()
	r.Messages, r.Readings = messages, readings
	if r.Seconds > 0 {
		r.ReadingsPerSec = float64(readings) / r.Seconds
		r.MessagesPerSec = float64(messages) / r.Seconds
	}
	r.P50us = float64(percentile(sorted, 50)) / 1e3
	r.P99us = float64(percentile(sorted, 99)) / 1e3
	r.CPUOtherUs = -1
	if readings > 0 {
		r.CPUSelfUs = float64(self) / 1e3 / float64(readings)
		if other >= 0 {
			r.CPUOtherUs = float64(other) / 1e3 / float64(readings)
		}
	}
}

// line is the result for a person.
func (r *result) line() string {
	other := ""
	if r.CPUOtherUs >= 0 {
		other = fmt.Sprintf(" + %.1f µs (%s)", r.CPUOtherUs, r.otherName())
	}
	s := fmt.Sprintf("%s %s devices=%d readings/message=%d: %.0f readings/s, %.0f messages/s, ack p50 %s p99 %s, CPU %.1f µs/reading (this process)%s, %d errors, load %s→%s",
		r.System, r.Store, r.Devices, r.Batch, r.ReadingsPerSec, r.MessagesPerSec, ms(r.P50us), ms(r.P99us), r.CPUSelfUs, other, r.Errors, r.LoadBefore, r.LoadAfter)
	if r.FirstError != "" {
		s += "; first error: " + r.FirstError
	}
	return s
}

func (r *result) otherName() string {
	if r.System == "mosquitto" {
		return "broker"
	}
	return "PostgreSQL server"
}

// append appends r to file as one JSON line.
func (r *result) append(file string) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(append(data, '\n'))
	return errors.Join(err, f.Close())
}

// ms formats microseconds as milliseconds.
func ms(us float64) string {
	switch {
	case us < 1000:
		return fmt.Sprintf("%.2f ms", us/1e3)
	case us < 10000:
		return fmt.Sprintf("%.1f ms", us/1e3)
	}
	return fmt.Sprintf("%.0f ms", us/1e3)
}

// thousands formats n with comma separators.
func thousands(n float64) string {
	s := fmt.Sprintf("%.0f", n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// report prints the results in file as a Markdown table, and the ratio
// the target is about: readings a second into SQLite with batches of 64
// over Mosquitto's readings a second at QoS 1, for each number of
// devices.
func report(w io.Writer, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	var rs []result
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		rs = append(rs, r)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	fmt.Fprintln(w, "| system | store | devices | readings per batch or message | readings/s | batches or messages/s | ack p50 | ack p99 | CPU µs/reading, all | of which broker or PostgreSQL | errors | load (1 min) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rs {
		all, other := fmt.Sprintf("%.1f", r.CPUSelfUs), "—"
		if r.CPUOtherUs >= 0 {
			all, other = fmt.Sprintf("%.1f", r.CPUSelfUs+r.CPUOtherUs), fmt.Sprintf("%.1f", r.CPUOtherUs)
		}
		system := "Sensible, coaps:// DTLS-PSK"
		if r.System == "mosquitto" {
			system = "Mosquitto, MQTT QoS 1 JSON"
		}
		fmt.Fprintf(w, "| %s | %s | %d | %d | %s | %s | %s | %s | %s | %s | %d | %s→%s |\n",
			system, r.Store, r.Devices, r.Batch, thousands(r.ReadingsPerSec), thousands(r.MessagesPerSec),
			ms(r.P50us), ms(r.P99us), all, other, r.Errors, r.LoadBefore, r.LoadAfter)
	}
	fmt.Fprintln(w)
	find := func(system, store string, devices, batch int) *result {
		for i := range rs {
			r := &rs[i]
			if r.System == system && r.Store == store && r.Devices == devices && r.Batch == batch {
				return r
			}
		}
		return nil
	}
	for _, devices := range []int{16, 256} {
		ours := find("sensible", "sqlite", devices, 64)
		mq := find("mosquitto", "memory", devices, 1)
		if ours == nil || mq == nil || mq.ReadingsPerSec == 0 {
			continue
		}
		ratio := ours.ReadingsPerSec / mq.ReadingsPerSec
		verdict := "met"
		if ratio < 5 {
			verdict = "NOT met"
		}
		fmt.Fprintf(w, "%d devices: SQLite, batches of 64: %s readings/s; Mosquitto QoS 1, one reading per message: %s readings/s; ratio **%.2f×** (target ≥ 5×: %s)",
			devices, thousands(ours.ReadingsPerSec), thousands(mq.ReadingsPerSec), ratio, verdict)
		if mb := find("mosquitto", "memory", devices, 64); mb != nil && mb.ReadingsPerSec > 0 {
			fmt.Fprintf(w, "; against Mosquitto with 64 readings per message (%s readings/s): %.2f×", thousands(mb.ReadingsPerSec), ours.ReadingsPerSec/mb.ReadingsPerSec)
		}
		fmt.Fprintln(w)
	}
	return nil
}
