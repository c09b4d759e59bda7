//go:build !linux

package natsembed

import (
	"errors"
	"os"
)

const syncfsSupported = false

func syncfs(*os.File) error { return errors.ErrUnsupported }
