//go:build !unix

package pgtest

import (
	"errors"
	"os/exec"
	"os/user"
)

var errNoUsers = errors.New("running programs as another user is not supported here")

func setUser(*exec.Cmd, *user.User) error { return errNoUsers }

func chown(string, *user.User) error { return errNoUsers }
