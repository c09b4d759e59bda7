package main

import (
	"os"
	"testing"
)

func TestParseStatusMem(t *testing.T) {
	status := "Name:\tverifeye-bridge\nVmPeak:\t 1269892 kB\nVmHWM:\t   33540 kB\nVmRSS:\t   32768 kB\nThreads:\t9\n"
	rss, hwm, err := parseStatusMem([]byte(status))
	if err != nil || rss != 32768<<10 || hwm != 33540<<10 {
		t.Errorf("parseStatusMem() = %d, %d, %v; want %d, %d, nil", rss, hwm, err, 32768<<10, 33540<<10)
	}
	for _, bad := range []string{"", "VmRSS:\t1 kB\n", "VmRSS:\tx kB\nVmHWM:\t1 kB\n", "VmRSS:\t1 MB\nVmHWM:\t1 kB\n"} {
		if _, _, err := parseStatusMem([]byte(bad)); err == nil {
			t.Errorf("parseStatusMem(%q) = nil error, want one", bad)
		}
	}
}

// TestProcMemOfThisProcess reads this process's own figures: resident memory
// is positive and never above its high-water mark.
func TestProcMemOfThisProcess(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc")
	}
	rss, hwm, err := procMem(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if rss <= 0 || hwm < rss {
		t.Errorf("procMem(self) = rss %d, hwm %d; want 0 < rss <= hwm", rss, hwm)
	}
}
