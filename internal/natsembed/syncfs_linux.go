package natsembed

import (
	"os"

	"golang.org/x/sys/unix"
)

const syncfsSupported = true

// syncfs syncs the file system holding f (syncfs(2)); since Linux 5.8 it
// reports write-back errors of any file on it.
func syncfs(f *os.File) error {
	for {
		err := unix.Syncfs(int(f.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}
