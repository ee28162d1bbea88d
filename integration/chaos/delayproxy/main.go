//go:build linux

// Command delayproxy delays TCP traffic in a network namespace, for the
// chaos suite on kernels without the netem qdisc. Run inside a container's
// network namespace (nsenter -n), with an iptables rule there that
// redirects the connections to delay to its port:
//
//	iptables -t nat -A OUTPUT -p tcp -d 172.28.0.12 --dport 2378 \
//	  -m mark ! --mark 0x71ca -j REDIRECT --to-ports 17999
//
// it accepts each redirected connection, dials its original destination
// (SO_ORIGINAL_DST) with the mark the rule skips, and copies both ways,
// holding every chunk for the delay plus a random jitter, in order. It
// prints "ready" once it listens, and "accepted" for each connection.
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
	"unsafe"
)

// mark is the firewall mark of the proxy's own connections, which the
// redirect rule must skip.
const mark = 0x71ca

func main() {
	listen := flag.String("listen", "127.0.0.1:17999", "address to accept redirected connections on")
	delay := flag.Duration("delay", 100*time.Millisecond, "delay of every chunk, each way")
	jitter := flag.Duration("jitter", 50*time.Millisecond, "random extra delay, up to this")
	flag.Parse()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "delayproxy:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		fmt.Println("accepted")
		go serve(c.(*net.TCPConn), *delay, *jitter)
	}
}

func serve(in *net.TCPConn, delay, jitter time.Duration) {
	defer in.Close()
	dst, err := originalDst(in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "delayproxy: original destination:", err)
		return
	}
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK, mark)
		}); err != nil {
			return err
		}
		return serr
	}}
	out, err := d.Dial("tcp", dst)
	if err != nil {
		return
	}
	defer out.Close()
	done := make(chan struct{}, 2)
	go func() { pipe(out, in, delay, jitter); done <- struct{}{} }()
	go func() { pipe(in, out, delay, jitter); done <- struct{}{} }()
	<-done
}

// pipe copies src to dst, each chunk held until delay plus a random part
// of jitter after it was read, keeping the order.
func pipe(dst, src net.Conn, delay, jitter time.Duration) {
	type chunk struct {
		b  []byte
		at time.Time
	}
	q := make(chan chunk, 1024)
	go func() {
		defer close(q)
		for {
			b := make([]byte, 32<<10)
			n, err := src.Read(b)
			if n > 0 {
				extra := time.Duration(0)
				if jitter > 0 {
					extra = rand.N(jitter)
				}
				q <- chunk{b[:n], time.Now().Add(delay + extra)}
			}
			if err != nil {
				return
			}
		}
	}()
	last := time.Time{}
	for c := range q {
		at := c.at
		if at.Before(last) {
			at = last // in order
		}
		time.Sleep(time.Until(at))
		last = at
		if _, err := dst.Write(c.b); err != nil {
			break
		}
	}
	// Drain what is left, so the reader ends.
	for range q {
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	io.Copy(io.Discard, src)
}

// originalDst is where a REDIRECTed connection was going
// (getsockopt SO_ORIGINAL_DST, IPv4).
func originalDst(c *net.TCPConn) (string, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return "", err
	}
	const soOriginalDst = 80
	var addr syscall.RawSockaddrInet4
	var gerr error
	err = rc.Control(func(fd uintptr) {
		size := uint32(syscall.SizeofSockaddrInet4)
		_, _, errno := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.SOL_IP, soOriginalDst,
			uintptr(unsafe.Pointer(&addr)), uintptr(unsafe.Pointer(&size)), 0)
		if errno != 0 {
			gerr = errno
		}
	})
	if err != nil {
		return "", err
	}
	if gerr != nil {
		return "", gerr
	}
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&addr.Port))[:])
	ip := net.IPv4(addr.Addr[0], addr.Addr[1], addr.Addr[2], addr.Addr[3])
	return net.JoinHostPort(ip.String(), fmt.Sprint(port)), nil
}
