package policy_test

import (
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/sensible-iot/sensible/consent/policy"
)

func load(name string) *policy.Manifest {
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		panic(err)
	}
	m, err := policy.Parse(data)
	if err != nil {
		panic(err)
	}
	return m
}

func printOut(out *policy.Output) {
	if out == nil {
		fmt.Println("  nothing leaves the device")
		return
	}
	keys := make([]string, 0, len(out.Fields))
	for k := range out.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := out.Fields[k]
		if t, ok := v.(time.Time); ok {
			v = t.Format("15:04")
		}
		fmt.Printf("  %s = %v\n", k, v)
	}
	for _, d := range out.Destinations {
		if d.To == "partner" {
			fmt.Printf("  may go to %s, if consent to %q covers it\n", d.Partner, d.Consent)
		} else {
			fmt.Printf("  may go to the %s\n", d.To)
		}
	}
}

// An air conditioner: camera frames stay on the device and are discarded
// at once; occupancy reaches the cloud only as a mean per 15 minutes; power
// use goes rounded, for analytics, under consent.
func Example_airConditioner() {
	m := load("aircon.json")
	e, _ := policy.NewEnforcer(m, "X9ZZGH47RJ5KVKZ0HXNY27NN98X", []byte("this device's own secret key"))
	at := time.Date(2026, 11, 23, 9, 7, 0, 0, time.UTC)

	fmt.Println("camera frame:")
	out, _ := e.Apply("camera-frame", policy.Reading{"frame": "<jpeg>"})
	printOut(out)

	fmt.Println("power:")
	out, _ = e.Apply("power", policy.Reading{"ts": at, "watts": 1234.5})
	printOut(out)

	fmt.Println("occupancy, 9:00 to 9:15:")
	agg, _ := e.Aggregator("occupancy")
	for i, people := range []int64{2, 3, 2, 1} {
		agg.Add(at.Add(time.Duration(i)*time.Minute), policy.Reading{"people": people})
	}
	for _, out := range agg.Flush(at.Add(10 * time.Minute)) {
		printOut(out)
	}
	// Output:
	// camera frame:
	//   nothing leaves the device
	// power:
	//   ts = 09:00
	//   watts = 1230
	//   may go to the cloud
	// occupancy, 9:00 to 9:15:
	//   people = 2
	//   ts = 09:00
	//   may go to the cloud
}

// A robot vacuum: its map never leaves; a pest sighting goes with the
// room position coarsened to 2 m, without the camera frame, and to the
// pest-control partner only under consent.
func Example_robotVacuum() {
	m := load("vacuum.json")
	e, _ := policy.NewEnforcer(m, "RHDVRWJ89MYV68Z3GHGPGAZ8KWW", []byte("this device's own secret key"))

	fmt.Println("map:")
	out, _ := e.Apply("map", policy.Reading{"grid": "<occupancy grid>"})
	printOut(out)

	fmt.Println("pest sighting:")
	out, _ = e.Apply("pest-sighting", policy.Reading{
		"ts": time.Date(2026, 11, 23, 23, 41, 0, 0, time.UTC), "species": "cockroach",
		"x": 3.37, "y": 7.9, "frame": "<jpeg>",
	})
	printOut(out)
	// The cloud checks what a partner is about to receive.
	err := m.Check("pest-sighting", policy.Destination{To: "partner", Partner: "pestco", Consent: "pest-alerts"}, policy.Reading{"x": 3.37})
	fmt.Println("unrounded position for pestco:", err)
	// Output:
	// map:
	//   nothing leaves the device
	// pest sighting:
	//   species = cockroach
	//   ts = 23:00
	//   x = 4
	//   y = 8
	//   may go to the cloud
	//   may go to pestco, if consent to "pest-alerts" covers it
	// unrounded position for pestco: policy: value finer than its transform allows: stream "pest-sighting" field "x": 3.37 is finer than round allows
}
