package manager

import (
	"context"
	"errors"
	"net"
	"syscall"

	"google.golang.org/grpc/credentials"
)

// localCreds are the control socket's transport credentials: no TLS (the
// socket's permissions guard it), and the peer's user ID, read from the
// kernel (SO_PEERCRED), for the records of who did what.
type localCreds struct{}

// localInfo is the AuthInfo of a control-socket connection.
type localInfo struct {
	credentials.CommonAuthInfo
	uid int
}

func (localInfo) AuthType() string { return "local" }

var errLocalOnly = errors.New("manager: local credentials serve the control socket only")

func (localCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	info := localInfo{uid: -1, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return conn, info, nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return conn, info, nil
	}
	_ = raw.Control(func(fd uintptr) {
		if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
			info.uid = int(cred.Uid)
		}
	})
	return conn, info, nil
}

func (localCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errLocalOnly
}

func (localCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "local"}
}

func (c localCreds) Clone() credentials.TransportCredentials { return c }

func (localCreds) OverrideServerName(string) error { return nil }
