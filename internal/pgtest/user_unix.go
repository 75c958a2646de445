//go:build unix

package pgtest

import (
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"
)

// ids returns u's numeric user and group IDs.
func ids(u *user.User) (uid, gid uint32, err error) {
	uid64, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, 0, err
	}
	gid64, err := strconv.ParseUint(u.Gid, 10, 32)
	return uint32(uid64), uint32(gid64), err
}

// setUser makes cmd run as u.
func setUser(cmd *exec.Cmd, u *user.User) error {
	uid, gid, err := ids(u)
	if err != nil {
		return err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	return nil
}

// chown gives path to u.
func chown(path string, u *user.User) error {
	uid, gid, err := ids(u)
	if err != nil {
		return err
	}
	return os.Chown(path, int(uid), int(gid))
}
