package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// latencies collects the acknowledgement latencies of one worker; the
// workers' collections are merged once they are done.
type latencies []time.Duration

// percentile returns the p-th percentile (0 < p <= 100) of sorted, by
// the nearest-rank method, or 0 for none.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// merge returns the workers' latencies in one sorted slice.
func merge(ls []latencies) []time.Duration {
	n := 0
	for _, l := range ls {
		n += len(l)
	}
	all := make([]time.Duration, 0, n)
	for _, l := range ls {
		all = append(all, l...)
	}
	slices.Sort(all)
	return all
}

// selfCPU returns the user and system CPU time this process has used,
// all its threads together.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clockTick is the unit of the CPU times in /proc/<pid>/stat: USER_HZ,
// which Linux fixes at 100 a second on every architecture Go runs on.
const clockTick = 10 * time.Millisecond

// procStat is what this program reads of /proc/<pid>/stat.
type procStat struct {
	ppid           int
	utime, stime   int64 // the process's own CPU, in clock ticks
	cutime, cstime int64 // its children's that it waited for
}

// readStat reads /proc/<pid>/stat.
func readStat(pid int) (procStat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name is in parentheses and may hold spaces and
	// parentheses itself: the fields after it start after the last ')'.
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(data[end+1:]))
	// f[0] is field 3 (state); ppid is field 4, utime 14, stime 15,
	// cutime 16, cstime 17.
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	num := func(field int) int64 {
		v, _ := strconv.ParseInt(f[field-3], 10, 64)
		return v
	}
	return procStat{ppid: int(num(4)), utime: num(14), stime: num(15), cutime: num(16), cstime: num(17)}, nil
}

// treeCPU returns the CPU time used so far by process pid and its
// children: its own, what its children that have exited used, and what
// its live children have used. It covers a broker (one process) and a
// PostgreSQL server, whose backends are the postmaster's children and
// whose exited backends' CPU the postmaster collects when it reaps them.
func treeCPU(pid int) (time.Duration, error) {
	st, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	ticks := st.utime + st.stime + st.cutime + st.cstime
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil || child == pid {
			continue
		}
		cs, err := readStat(child)
		if err != nil || cs.ppid != pid {
			continue // gone, or not a child
		}
		ticks += cs.utime + cs.stime + cs.cutime + cs.cstime
	}
	return time.Duration(ticks) * clockTick, nil
}

// findProcess returns the pid of the one process whose command name is
// comm, or 0 if there is none or more than one.
func findProcess(comm string) int {
	entries, _ := os.ReadDir("/proc")
	found := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		name, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(name)) != comm {
			continue
		}
		if found != 0 {
			return 0
		}
		found = pid
	}
	return found
}

// loadAverage returns the first field of /proc/loadavg, the load over
// the last minute, or "?".
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	if f := strings.Fields(string(data)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

// A cpuMeter measures the CPU used during a run: by this process, and by
// another process and its children (the broker or the database server),
// when there is one to watch.
type cpuMeter struct {
	profile     *os.File // the CPU profile being written, if any
	other       int      // pid, or 0
	self0       time.Duration
	other0      time.Duration
	otherFailed bool
}

// startCPU starts measuring, and writes a CPU profile to profile if it
// is not empty.
func startCPU(other int, profile string) (*cpuMeter, error) {
	m := &cpuMeter{other: other}
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, err
		}
		m.profile = f
	}
	if other != 0 {
		var err error
		if m.other0, err = treeCPU(other); err != nil {
			m.otherFailed = true
		}
	}
	m.self0 = selfCPU()
	return m, nil
}

// stop returns the CPU used since start by this process and by the other
// one (-1 when there is none or it could not be read).
func (m *cpuMeter) stop() (self, other time.Duration) {
	self = selfCPU() - m.self0
	if m.profile != nil {
		pprof.StopCPUProfile()
		m.profile.Close()
	}
	other = -1
	if m.other != 0 && !m.otherFailed {
		if o, err := treeCPU(m.other); err == nil {
			other = o - m.other0
		}
	}
	return self, other
}
