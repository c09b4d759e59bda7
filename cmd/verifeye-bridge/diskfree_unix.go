//go:build unix

package main

import "syscall"

// diskFree returns the bytes free for an unprivileged writer on the file
// system holding dir; ok is false when it cannot tell.
func diskFree(dir string) (free int64, ok bool) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return 0, false
	}
	return int64(fs.Bavail) * int64(fs.Bsize), true
}
