// Package chaos drives the docker compose cluster (docker-compose.yml: 3
// managers, 3 workers, each node a container of the FROM-scratch image)
// through failures: a leader killed mid-rotation, a partitioned manager, a
// worker paused through a rotation, a restart of everything, a removed
// node's certificate; and (faults_test.go) a lossy, slow network between
// managers (tc netem, or where the kernel has none, iptables loss and a
// delay proxy, ./delayproxy, run in each manager's namespace), the leader
// cut off, the leader's disk full, a rolling restart under a storm of
// joins, each checked against a history of what it sent
// (checkInvariants). The fault scenarios run as root: nsenter, tc or
// iptables, ip route and mount tmpfs on the host. Every scenario brings up its own fresh cluster, and
// asserts through the cluster's own CLI (docker exec) and the certificate
// files in the nodes' volumes (docker cp).
//
// The suite needs docker and docker-compose, and runs only when asked:
//
//	QUORUMCA_CHAOS=1 go test -count=1 -timeout 20m -v ./integration/chaos/
//
// QUORUMCA_CHAOS_IMAGE=IMAGE uses an existing image instead of building
// quorumca:chaos-<pid> from the working tree; QUORUMCA_CHAOS_DEBUG=1 logs
// every unsuccessful poll of every wait.
package chaos

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/backup"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

const (
	// envChaos gates the suite.
	envChaos = "QUORUMCA_CHAOS"
	// envImage names an image to use instead of building one.
	envImage = "QUORUMCA_CHAOS_IMAGE"
	// envDebug logs every unsuccessful poll.
	envDebug = "QUORUMCA_CHAOS_DEBUG"
	// projectPrefix starts every compose project this suite makes; the
	// process ID follows, so that leftovers of a dead run can be found.
	projectPrefix = "qcachaos"
	// waitBound bounds every wait unless a scenario says otherwise.
	waitBound = 90 * time.Second
	// pollEvery is the interval of every poll.
	pollEvery = 700 * time.Millisecond
	// cmdTimeout bounds every docker, docker-compose and CLI command.
	cmdTimeout = 60 * time.Second
)

var (
	managers = []string{"manager1", "manager2", "manager3"}
	workers  = []string{"worker1", "worker2", "worker3"}
	services = append(slices.Clone(managers), workers...)
	// hostOctet is each service's last address octet in docker-compose.yml.
	hostOctet = map[string]int{"manager1": 11, "manager2": 12, "manager3": 13, "worker1": 21, "worker2": 22, "worker3": 23}
)

// suite is what every scenario shares: the repository, the image, the
// compose command.
var suite struct {
	once    sync.Once
	err     error
	root    string   // the repository
	compose []string // docker-compose, or docker compose
	image   string
	built   bool // the image is this run's to remove
	mu      sync.Mutex
	nets    map[string]bool // network prefixes handed out
}

func TestMain(m *testing.M) {
	code := m.Run()
	if os.Getenv(envChaos) == "1" && suite.err == nil && suite.root != "" {
		// Cleanups take every project down; this catches what a failed
		// `down` left behind.
		sweepProjects(func(pid int) bool { return pid == os.Getpid() })
		if suite.built {
			if out, err := exec.Command("docker", "rmi", suite.image).CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "chaos: docker rmi %s: %v: %s\n", suite.image, err, out)
			}
		}
	}
	os.Exit(code)
}

// requireChaos skips the test unless QUORUMCA_CHAOS=1, fails it if docker
// is not usable then, and builds the image once.
func requireChaos(t *testing.T) {
	t.Helper()
	if os.Getenv(envChaos) != "1" {
		t.Skipf("chaos suite skipped: it needs docker and docker-compose; run it with `%s=1 go test -count=1 -timeout 20m -v ./integration/chaos/`", envChaos)
	}
	suite.once.Do(setupSuite)
	if suite.err != nil {
		t.Fatalf("chaos suite setup: %v", suite.err)
	}
}

func setupSuite() {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		suite.err = fmt.Errorf("%s=1 but `docker info` fails (is the docker daemon up and reachable?): %v: %s", envChaos, err, out)
		return
	}
	if p, err := exec.LookPath("docker-compose"); err == nil {
		suite.compose = []string{p}
	} else if err := exec.CommandContext(ctx, "docker", "compose", "version").Run(); err == nil {
		suite.compose = []string{"docker", "compose"}
	} else {
		suite.err = errors.New("neither docker-compose nor `docker compose` is available")
		return
	}
	wd, err := os.Getwd()
	if err != nil {
		suite.err = err
		return
	}
	suite.root = filepath.Clean(filepath.Join(wd, "..", ".."))
	if _, err := os.Stat(filepath.Join(suite.root, "docker-compose.yml")); err != nil {
		suite.err = fmt.Errorf("repository root %s: %w", suite.root, err)
		return
	}
	suite.nets = map[string]bool{}
	// Leftovers of a run that died (a test timeout ends the process
	// without cleanups).
	sweepProjects(func(pid int) bool { return pid != os.Getpid() && !processAlive(pid) })

	if img := os.Getenv(envImage); img != "" {
		suite.image = img
		return
	}
	// The image from the working tree, built as scripts/compose.sh build
	// does, but in a build context of its own: bin/ of the repository is
	// not touched, and the context is only the binary and the Dockerfile.
	dir, err := os.MkdirTemp("", "quorumca-chaos-build-")
	if err != nil {
		suite.err = err
		return
	}
	defer os.RemoveAll(dir)
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(dir, "bin", "quorumca-static"), "./cmd/quorumca")
	build.Dir = suite.root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		suite.err = fmt.Errorf("go build ./cmd/quorumca: %v: %s", err, out)
		return
	}
	dockerfile, err := os.ReadFile(filepath.Join(suite.root, "Dockerfile"))
	if err != nil {
		suite.err = err
		return
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), dockerfile, 0o644); err != nil {
		suite.err = err
		return
	}
	suite.image = fmt.Sprintf("quorumca:chaos-%d", os.Getpid())
	if out, err := exec.CommandContext(ctx, "docker", "build", "-q", "-t", suite.image, dir).CombinedOutput(); err != nil {
		suite.err = fmt.Errorf("docker build: %v: %s", err, out)
		return
	}
	suite.built = true
	fmt.Fprintf(os.Stderr, "chaos: built %s in %s\n", suite.image, time.Since(start).Round(100*time.Millisecond))
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// sweepProjects takes down every compose project of this suite (by its
// name) whose process ID matches.
func sweepProjects(match func(pid int) bool) {
	found := map[string]bool{}
	label := `{{.Label "com.docker.compose.project"}}`
	for _, args := range [][]string{
		{"ps", "-a", "--filter", "label=com.docker.compose.project", "--format", label},
		{"network", "ls", "--filter", "label=com.docker.compose.project", "--format", label},
		{"volume", "ls", "--filter", "label=com.docker.compose.project", "--format", label},
	} {
		out, err := exec.Command("docker", args...).Output()
		if err != nil {
			continue
		}
		for p := range strings.FieldsSeq(string(out)) {
			found[p] = true
		}
	}
	for p := range found {
		digits, ok := strings.CutPrefix(p, projectPrefix)
		if !ok {
			continue
		}
		end := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' })
		if end < 0 {
			end = len(digits)
		}
		pid, err := strconv.Atoi(digits[:end])
		if err != nil || !match(pid) {
			continue
		}
		fmt.Fprintf(os.Stderr, "chaos: taking down leftover project %s\n", p)
		c := &cluster{project: p, net: "172.28.250"}
		c.unpauseAll()
		if out, err := c.composeCmd(context.Background(), "down", "-v", "--remove-orphans", "--timeout", "5"); err != nil {
			fmt.Fprintf(os.Stderr, "chaos: down %s: %v: %s\n", p, err, out)
		}
	}
}

// freeNet returns a /24 prefix 172.28.N (N from 60 + index up) that no
// docker network overlaps and no other scenario of this run holds.
func freeNet(index int) (string, error) {
	var used []*net.IPNet
	ids, err := exec.Command("docker", "network", "ls", "-q").Output()
	if err != nil {
		return "", fmt.Errorf("docker network ls: %w", err)
	}
	if f := strings.Fields(string(ids)); len(f) > 0 {
		out, err := exec.Command("docker", append([]string{"network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}"}, f...)...).Output()
		if err != nil {
			return "", fmt.Errorf("docker network inspect: %w", err)
		}
		for s := range strings.FieldsSeq(string(out)) {
			if _, n, err := net.ParseCIDR(s); err == nil {
				used = append(used, n)
			}
		}
	}
	suite.mu.Lock()
	defer suite.mu.Unlock()
	for n := 60 + index; n < 250; n++ {
		prefix := fmt.Sprintf("172.28.%d", n)
		if suite.nets[prefix] {
			continue
		}
		_, mine, _ := net.ParseCIDR(prefix + ".0/24")
		if !slices.ContainsFunc(used, func(o *net.IPNet) bool { return o.Contains(mine.IP) || mine.Contains(o.IP) }) {
			suite.nets[prefix] = true
			return prefix, nil
		}
	}
	return "", errors.New("no free 172.28.N.0/24 network for the cluster")
}

// cluster is one compose project of the 6 nodes.
type cluster struct {
	t       *testing.T
	project string
	net     string   // the /24 prefix, e.g. 172.28.60
	extra   []string // compose files laid over docker-compose.yml
}

// newCluster brings up a fresh cluster for the test and waits until it is
// healthy; it is taken down (volumes too) when the test ends, however it
// ends. overrides are compose files laid over docker-compose.yml (-f).
func newCluster(t *testing.T, name string, index int, overrides ...string) *cluster {
	t.Helper()
	requireChaos(t)
	prefix, err := freeNet(index)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, project: fmt.Sprintf("%s%d%s", projectPrefix, os.Getpid(), name), net: prefix, extra: overrides}
	t.Cleanup(c.teardown)
	start := time.Now()
	if out, err := c.composeCmd(t.Context(), "up", "-d"); err != nil {
		t.Fatalf("docker-compose up -d: %v\n%s", err, out)
	}
	c.waitClusterReady(waitBound)
	t.Logf("cluster %s on %s.0/24 (image %s) up and ready in %s", c.project, c.net, suite.image, since(start))
	return c
}

func (c *cluster) env() []string {
	return append(os.Environ(), "QUORUMCA_IMAGE="+suite.image, "QUORUMCA_NET="+c.net, "COMPOSE_PROJECT_NAME="+c.project)
}

// composeCmd runs docker-compose on the project; it returns the combined
// output.
func (c *cluster) composeCmd(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*cmdTimeout)
	defer cancel()
	full := append(slices.Clone(suite.compose[1:]), "-p", c.project, "-f", filepath.Join(suite.root, "docker-compose.yml"))
	for _, f := range c.extra {
		full = append(full, "-f", f)
	}
	cmd := exec.CommandContext(ctx, suite.compose[0], append(full, args...)...)
	cmd.Env = c.env()
	cmd.Dir = suite.root
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// teardown prints the nodes' last logs if the test failed, and takes the
// project down with its volumes.
func (c *cluster) teardown() {
	t := c.t
	if t.Failed() {
		for _, svc := range services {
			id := c.containerID(svc)
			if id == "" {
				continue
			}
			out, _ := exec.Command("docker", "logs", "--tail", "30", id).CombinedOutput()
			t.Logf("last 30 log lines of %s (%s):\n%s", svc, c.project, out)
		}
	}
	c.unpauseAll()
	var err error
	var out string
	for range 2 {
		if out, err = c.composeCmd(context.Background(), "down", "-v", "--remove-orphans", "--timeout", "5"); err == nil {
			break
		}
	}
	if err != nil {
		t.Errorf("docker-compose -p %s down -v: %v\n%s", c.project, err, out)
	}
	suite.mu.Lock()
	delete(suite.nets, c.net)
	suite.mu.Unlock()
}

// unpauseAll unpauses the project's paused containers, which docker
// cannot stop.
func (c *cluster) unpauseAll() {
	out, err := exec.Command("docker", "ps", "-q", "--filter", "label=com.docker.compose.project="+c.project, "--filter", "status=paused").Output()
	if err != nil {
		return
	}
	for id := range strings.FieldsSeq(string(out)) {
		exec.Command("docker", "unpause", id).Run()
	}
}

// docker runs a docker command; it fails the test if the command fails.
func (c *cluster) docker(args ...string) string {
	c.t.Helper()
	out, err := c.tryDocker(args...)
	if err != nil {
		c.t.Fatalf("docker %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// tryDocker runs a docker command and returns its stdout; the error
// carries its stderr.
func (c *cluster) tryDocker(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	return runCmd(ctx, "docker", args...)
}

func runCmd(ctx context.Context, name string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return stdout.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()+" "+stdout.String()))
	}
	return stdout.String(), nil
}

// tryDockerAll is tryDocker returning stdout and stderr together (docker
// logs writes the container's stderr to its own).
func (c *cluster) tryDockerAll(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// containerID returns the container of a service ("" if there is none).
func (c *cluster) containerID(svc string) string {
	out, err := exec.Command("docker", "ps", "-aq",
		"--filter", "label=com.docker.compose.project="+c.project,
		"--filter", "label=com.docker.compose.service="+svc).Output()
	if err != nil {
		return ""
	}
	ids := strings.Fields(string(out))
	if len(ids) == 0 {
		return ""
	}
	return ids[0]
}

// ctr returns the container of a service, or fails the test.
func (c *cluster) ctr(svc string) string {
	c.t.Helper()
	id := c.containerID(svc)
	if id == "" {
		c.t.Fatalf("no container for service %s in project %s", svc, c.project)
	}
	return id
}

// ip returns a service's fixed address.
func (c *cluster) ip(svc string) string { return fmt.Sprintf("%s.%d", c.net, hostOctet[svc]) }

// networkName is the compose network's name.
func (c *cluster) networkName() string { return c.project + "_quorumca" }

// cli runs the quorumca CLI in a service's container against its own
// daemon (the control socket under /data).
func (c *cluster) cli(svc string, args ...string) (string, error) {
	return c.cliTimeout(cmdTimeout, svc, args...)
}

func (c *cluster) cliTimeout(d time.Duration, svc string, args ...string) (string, error) {
	id := c.containerID(svc)
	if id == "" {
		return "", fmt.Errorf("no container for %s", svc)
	}
	ctx, cancel := context.WithTimeout(c.t.Context(), d)
	defer cancel()
	full := append([]string{"exec", id, "/quorumca"}, args...)
	full = append(full, "--data-dir", "/data")
	out, err := runCmd(ctx, "docker", full...)
	if err != nil {
		return out, fmt.Errorf("%s: quorumca %s: %w", svc, strings.Join(args, " "), err)
	}
	return out, nil
}

// mustCLI is cli that fails the test on error.
func (c *cluster) mustCLI(svc string, args ...string) string {
	c.t.Helper()
	out, err := c.cli(svc, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// The --format json shapes of the CLI (cmd/quorumca).
type statusJSON struct {
	ClusterID       string `json:"cluster_id"`
	NodeID          string `json:"node_id"`
	Role            string `json:"role"`
	LeaderID        string `json:"leader_id"`
	LeaderAddr      string `json:"leader_addr"`
	RootFingerprint string `json:"root_fingerprint"`
	Nodes           uint32 `json:"nodes"`
	CertExpiry      string `json:"cert_expiry"`
	Rotation        *struct {
		StartedAt time.Time `json:"started_at"`
		NewRoot   string    `json:"new_root_fingerprint"`
		Total     uint32    `json:"total"`
		Converged uint32    `json:"converged"`
		Skipped   uint32    `json:"skipped"`
	} `json:"rotation"`
	Recovery *struct {
		Kind string   `json:"kind"`
		From uint64   `json:"from_index"`
		Lost []string `json:"lost_managers"`
	} `json:"recovery"`
	Problem  string `json:"problem"`
	Health   string `json:"health"`
	Managers []struct {
		NodeID       string `json:"node_id"`
		Addr         string `json:"addr"`
		Voter        bool   `json:"voter"`
		Leader       bool   `json:"leader"`
		Reachability string `json:"reachability"`
	} `json:"managers"`
}

type nodeJSON struct {
	ID           string    `json:"id"`
	Role         string    `json:"role"`
	Addr         string    `json:"addr"`
	Status       string    `json:"status"`
	Reachability string    `json:"reachability"`
	Leader       bool      `json:"leader"`
	CertSerial   string    `json:"cert_serial"`
	CertNotAfter time.Time `json:"cert_not_after"`
	TLSStatus    string    `json:"tls_status"`
}

func (c *cluster) status(svc string) (statusJSON, error) {
	var st statusJSON
	out, err := c.cli(svc, "status", "--format", "json")
	// status exits 3 to 7 for an unhealthy node, after printing it.
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() >= 3 && exit.ExitCode() <= 7 && json.Unmarshal([]byte(out), &st) == nil {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("%s: status --format json: %w: %q", svc, err, out)
	}
	return st, nil
}

func (c *cluster) nodes(svc string) ([]nodeJSON, error) {
	var ns []nodeJSON
	out, err := c.cli(svc, "node", "ls", "--format", "json")
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(out), &ns); err != nil {
		return nil, fmt.Errorf("%s: node ls --format json: %w: %q", svc, err, out)
	}
	return ns, nil
}

func (c *cluster) mustNodes(svc string) []nodeJSON {
	c.t.Helper()
	ns, err := c.nodes(svc)
	if err != nil {
		c.t.Fatal(err)
	}
	return ns
}

// nodeByID returns the node of node ls with the ID.
func nodeByID(ns []nodeJSON, id string) (nodeJSON, bool) {
	i := slices.IndexFunc(ns, func(n nodeJSON) bool { return n.ID == id })
	if i < 0 {
		return nodeJSON{}, false
	}
	return ns[i], true
}

func nodeIDs(ns []nodeJSON) []string {
	ids := make([]string, len(ns))
	for i, n := range ns {
		ids[i] = n.ID
	}
	slices.Sort(ids)
	return ids
}

// serviceOf maps a node of node ls to its service by its address.
func (c *cluster) serviceOf(n nodeJSON) string {
	host, _, err := net.SplitHostPort(n.Addr)
	if err != nil {
		host = n.Addr
	}
	for svc := range hostOctet {
		if c.ip(svc) == host {
			return svc
		}
	}
	return ""
}

// health returns a container's health (or its state when it has none).
func (c *cluster) health(svc string) string {
	id := c.containerID(svc)
	if id == "" {
		return "missing"
	}
	out, err := c.tryDocker("inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}", id)
	if err != nil {
		return "unknown: " + err.Error()
	}
	return strings.TrimSpace(out)
}

// waitHealthy waits until the services' containers are healthy.
func (c *cluster) waitHealthy(d time.Duration, svcs ...string) {
	c.t.Helper()
	c.eventually(fmt.Sprintf("%v healthy", svcs), d, func() error {
		var bad []string
		for _, svc := range svcs {
			if h := c.health(svc); h != "healthy" {
				bad = append(bad, svc+" "+h)
			}
		}
		if len(bad) > 0 {
			return fmt.Errorf("not healthy: %v", bad)
		}
		return nil
	})
}

// waitClusterReady waits until the 6 containers are healthy, a leader is
// known, and node ls lists 6 nodes ready.
func (c *cluster) waitClusterReady(d time.Duration) []nodeJSON {
	c.t.Helper()
	deadline := time.Now().Add(d)
	c.waitHealthy(d, services...)
	var ns []nodeJSON
	c.eventually("6 nodes ready in node ls", time.Until(deadline), func() error {
		var err error
		if ns, err = c.nodes("manager1"); err != nil {
			return err
		}
		return allReady(ns, 6)
	})
	return ns
}

// allReady checks that node ls lists n nodes, all ready, with a leader.
func allReady(ns []nodeJSON, n int) error {
	if len(ns) != n {
		return fmt.Errorf("node ls lists %d nodes, want %d", len(ns), n)
	}
	leader := false
	for _, nd := range ns {
		if nd.Status != "ready" {
			return fmt.Errorf("node %s (%s) is %s", nd.ID, nd.Addr, nd.Status)
		}
		leader = leader || nd.Leader
	}
	if !leader {
		return errors.New("no leader in node ls")
	}
	return nil
}

// eventually polls f until it returns nil, for at most d; then it fails
// the test with f's last error.
func (c *cluster) eventually(what string, d time.Duration, f func() error) time.Duration {
	c.t.Helper()
	start := time.Now()
	deadline := start.Add(d)
	for {
		err := f()
		if err == nil {
			return time.Since(start)
		}
		if time.Now().After(deadline) || c.t.Context().Err() != nil {
			c.t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		if os.Getenv(envDebug) != "" {
			c.t.Logf("%s %s: %v", time.Now().Format("15:04:05.0"), what, err)
		}
		time.Sleep(pollEvery)
	}
}

// readFile reads a file of a container (running or not) through docker cp.
func (c *cluster) readFile(svc, path string) ([]byte, error) {
	id := c.containerID(svc)
	if id == "" {
		return nil, fmt.Errorf("no container for %s", svc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", "cp", id+":"+path, "-")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("docker cp %s:%s: %w: %s", svc, path, err, strings.TrimSpace(stderr.String()))
	}
	tr := tar.NewReader(&stdout)
	for {
		h, err := tr.Next()
		if err != nil {
			return nil, fmt.Errorf("docker cp %s:%s: no file in the archive: %w", svc, path, err)
		}
		if h.Typeflag == tar.TypeReg {
			return io.ReadAll(tr)
		}
	}
}

// writeFile writes data, 0600, into a container's file system (a volume
// it mounts too) through docker cp.
func (c *cluster) writeFile(svc, path string, data []byte) error {
	id := c.containerID(svc)
	if id == "" {
		return fmt.Errorf("no container for %s", svc)
	}
	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	if err := tw.WriteHeader(&tar.Header{Name: filepath.Base(path), Mode: 0o600, Size: int64(len(data)), ModTime: time.Now(), Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	if _, err := tw.Write(data); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", "cp", "-", id+":"+filepath.Dir(path))
	cmd.Stdin, cmd.Stderr = &archive, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("docker cp - %s:%s: %w: %s", svc, path, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func (c *cluster) mustReadFile(svc, path string) []byte {
	c.t.Helper()
	b, err := c.readFile(svc, path)
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

const (
	certFile = "/data/certificates/node.crt"
	keyFile  = "/data/certificates/node.key"
	rootFile = "/data/certificates/root-ca.crt"
)

// nodeCert is what a node's certificate file says.
type nodeCert struct {
	pem      []byte
	id       ca.Identity
	serial   string // hex, as node ls writes it
	notAfter time.Time
}

func parseNodeCert(pemBytes []byte) (nodeCert, error) {
	certs, err := ca.ParseCertificates(pemBytes)
	if err != nil {
		return nodeCert{}, err
	}
	id, err := ca.IdentityOf(certs[0])
	if err != nil {
		return nodeCert{}, err
	}
	return nodeCert{pem: pemBytes, id: id, serial: certs[0].SerialNumber.Text(16), notAfter: certs[0].NotAfter}, nil
}

func (c *cluster) cert(svc string) (nodeCert, error) {
	b, err := c.readFile(svc, certFile)
	if err != nil {
		return nodeCert{}, err
	}
	nc, err := parseNodeCert(b)
	if err != nil {
		return nodeCert{}, fmt.Errorf("%s: %s: %w", svc, certFile, err)
	}
	return nc, nil
}

func (c *cluster) mustCert(svc string) nodeCert {
	c.t.Helper()
	nc, err := c.cert(svc)
	if err != nil {
		c.t.Fatal(err)
	}
	return nc
}

// certs reads every service's node certificate.
func (c *cluster) certs(svcs ...string) map[string]nodeCert {
	c.t.Helper()
	out := map[string]nodeCert{}
	for _, svc := range svcs {
		out[svc] = c.mustCert(svc)
	}
	return out
}

// sameCerts reports whether two PEM inputs hold the same certificates.
func sameCerts(a, b []byte) bool {
	ca1, err1 := ca.ParseCertificates(a)
	ca2, err2 := ca.ParseCertificates(b)
	if err1 != nil || err2 != nil || len(ca1) != len(ca2) {
		return false
	}
	for i := range ca1 {
		if !ca1[i].Equal(ca2[i]) {
			return false
		}
	}
	return true
}

// describeRoot names a root bundle for messages: the subject and the
// fingerprint of its first certificate.
func describeRoot(bundle []byte) string {
	certs, err := ca.ParseCertificates(bundle)
	if err != nil {
		return fmt.Sprintf("unparsable bundle (%v)", err)
	}
	return fmt.Sprintf("%d cert(s), first %s sha256:%.16s", len(certs), certs[0].Subject, agent.BundleFingerprint(bundle))
}

// checkNodeOnRoot checks that a service's root-ca.crt is root, and that
// its node.crt verifies under root and names want (zero: any identity).
func (c *cluster) checkNodeOnRoot(svc string, root []byte, want ca.Identity) (nodeCert, error) {
	got, err := c.readFile(svc, rootFile)
	if err != nil {
		return nodeCert{}, err
	}
	if !sameCerts(got, root) {
		return nodeCert{}, fmt.Errorf("%s: %s is %s, want %s", svc, rootFile, describeRoot(got), describeRoot(root))
	}
	nc, err := c.cert(svc)
	if err != nil {
		return nodeCert{}, err
	}
	id, _, err := ca.VerifyPEM(nc.pem, root, time.Now())
	if err != nil {
		return nodeCert{}, fmt.Errorf("%s: %s does not verify under %s: %w", svc, certFile, describeRoot(root), err)
	}
	if want != (ca.Identity{}) && id != want {
		return nodeCert{}, fmt.Errorf("%s: %s names %+v, want %+v (the node lost its identity)", svc, certFile, id, want)
	}
	return nc, nil
}

// leaderService returns the service of the leader as a manager sees it.
func (c *cluster) leaderService(via string) (svc, id string, err error) {
	st, err := c.status(via)
	if err != nil {
		return "", "", err
	}
	if st.LeaderID == "" {
		return "", "", fmt.Errorf("%s knows no leader", via)
	}
	ns, err := c.nodes(via)
	if err != nil {
		return "", "", err
	}
	n, ok := nodeByID(ns, st.LeaderID)
	if !ok {
		return "", "", fmt.Errorf("leader %s is not in node ls", st.LeaderID)
	}
	if svc = c.serviceOf(n); svc == "" {
		return "", "", fmt.Errorf("leader %s at %q is no service of the project", n.ID, n.Addr)
	}
	return svc, st.LeaderID, nil
}

// running reports whether a service's container runs.
func (c *cluster) running(svc string) bool {
	out, err := c.tryDocker("inspect", "-f", "{{.State.Running}}", c.ctr(svc))
	return err == nil && strings.TrimSpace(out) == "true"
}

// nodeCredentials is a node's key pair and trust bundle, as copied from
// its volume.
type nodeCredentials struct {
	cert, key, root []byte
}

func (c *cluster) credentials(svc string) nodeCredentials {
	c.t.Helper()
	return nodeCredentials{
		cert: c.mustReadFile(svc, certFile),
		key:  c.mustReadFile(svc, keyFile),
		root: c.mustReadFile(svc, rootFile),
	}
}

// clientTLS is a client configuration that presents creds' certificate and
// trusts roots, checking managers as the CLI does (agent.ManagerName).
func clientTLS(t *testing.T, creds nodeCredentials, roots []byte) *tls.Config {
	t.Helper()
	pool, _, err := ca.ParseBundle(roots)
	if err != nil {
		t.Fatalf("trust bundle: %v", err)
	}
	pair, err := tls.X509KeyPair(creds.cert, creds.key)
	if err != nil {
		t.Fatalf("key pair: %v", err)
	}
	cfg := agent.BundleClientTLS(pool, agent.ManagerName)
	cfg.Certificates = []tls.Certificate{pair}
	return cfg
}

// refused calls a node RPC at addr with cfg and returns nil if the manager
// refused it: PermissionDenied or Unauthenticated, or a handshake the
// server ended with a TLS alert. It describes the refusal.
func refused(ctx context.Context, addr string, cfg *tls.Config, call func(context.Context, *grpc.ClientConn) error) (string, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = call(cctx, conn)
	switch status.Code(err) {
	case codes.OK:
		return "", errors.New("the call succeeded")
	case codes.PermissionDenied, codes.Unauthenticated:
		return fmt.Sprintf("%s: %s", status.Code(err), status.Convert(err).Message()), nil
	case codes.Unavailable:
		// Not reachable, or the server refused the handshake: a raw TLS
		// connection tells which.
		alert, herr := tlsAlert(addr, cfg)
		if herr != nil {
			return "", fmt.Errorf("call: %v; raw handshake: %v", err, herr)
		}
		return "handshake refused with TLS alert " + alert, nil
	}
	return "", fmt.Errorf("%v (code %s), want PermissionDenied, Unauthenticated or a refused handshake", err, status.Code(err))
}

// tlsAlert opens a raw TLS connection with cfg and returns the alert the
// server sends when it refuses the client's certificate (in TLS 1.3, after
// the client's side of the handshake is done).
func tlsAlert(addr string, cfg *tls.Config) (string, error) {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err == nil {
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		_, err = conn.Read(b[:])
		if err == nil {
			return "", errors.New("the server took the connection")
		}
	}
	const remote = "remote error: tls: "
	if msg := err.Error(); strings.Contains(msg, remote) {
		return msg[strings.Index(msg, remote)+len(remote):], nil
	}
	return "", err
}

// newCSR is a CSR for a fresh key, as a renewing node sends.
func newCSR() ([]byte, error) {
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return ca.NewCSR(rand.Reader, key, "")
}

func since(t time.Time) time.Duration { return time.Since(t).Round(100 * time.Millisecond) }

// History: what a fault scenario sent, and what came back. The invariants
// are checked against it and against every manager's own state; a failed
// scenario writes it to a temp file.

// op is one operation a scenario sent and its outcome.
type op struct {
	Client string `json:"client"`
	// Op is join, renew, rm or rotate.
	Op string `json:"op"`
	// Via is the service the operation was sent to.
	Via string `json:"via"`
	// Arg is, for a join, the label of the token it used (never the
	// secret); for rm and renew, the node ID; for rotate, the label of the
	// token it replaced.
	Arg   string    `json:"arg,omitempty"`
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	OK    bool      `json:"ok"`
	// Result is what an acknowledged operation returned, or the error.
	Result string `json:"result"`
	// NodeID and Serial are what an acknowledged join or renew issued.
	NodeID string `json:"node_id,omitempty"`
	Serial string `json:"serial,omitempty"`
	cert   []byte
}

// history is the operations of one scenario; mu guards ops (the clients
// of a storm record concurrently).
type history struct {
	mu  sync.Mutex
	ops []op
}

// newHistory returns an empty history that, if the test fails, is written
// as JSON to a temp file whose path the test logs.
func newHistory(t *testing.T) *history {
	h := &history{}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		f, err := os.CreateTemp("", "quorumca-"+t.Name()+"-history-*.json")
		if err != nil {
			t.Logf("history not written: %v", err)
			return
		}
		defer f.Close()
		enc := json.NewEncoder(f)
		enc.SetIndent("", "  ")
		if err := enc.Encode(h.all()); err != nil {
			t.Logf("history not written: %v", err)
			return
		}
		t.Logf("history of the %d operations sent: %s", len(h.all()), f.Name())
	})
	return h
}

// record completes o with err's outcome, and appends it.
func (h *history) record(o op, err error) op {
	o.End = time.Now()
	if err != nil {
		o.OK, o.Result, o.NodeID, o.Serial, o.cert = false, err.Error(), "", "", nil
	} else {
		o.OK = true
		if o.Result == "" {
			o.Result = strings.TrimSpace(fmt.Sprintf("node %s serial %s", o.NodeID, o.Serial))
		}
	}
	h.mu.Lock()
	h.ops = append(h.ops, o)
	h.mu.Unlock()
	return o
}

func (h *history) all() []op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.ops)
}

// count returns how many operations of a kind were sent, and how many
// acknowledged.
func (h *history) count(kind string) (sent, acked int) {
	for _, o := range h.all() {
		if o.Op == kind {
			sent++
			if o.OK {
				acked++
			}
		}
	}
	return sent, acked
}

// baseline is what a fault scenario reads before its fault: the root the
// cluster trusts, its nodes, and the worker join token.
type baseline struct {
	root  []byte
	nodes []nodeJSON
	token string
}

func (c *cluster) baseline() baseline {
	c.t.Helper()
	b := baseline{root: []byte(c.mustCLI("manager1", "ca")), nodes: c.mustNodes("manager1"), token: strings.TrimSpace(c.mustCLI("manager1", "join-token", "-q", "worker"))}
	if _, err := ca.ParseToken(b.token); err != nil {
		c.t.Fatalf("join-token -q worker printed %q: %v", b.token, err)
	}
	return b
}

// hostCreds are the credentials a node joined from the host holds.
type hostCreds struct {
	id                ca.Identity
	key, cert, bundle []byte
}

// join enrolls a new worker from the host through svc, as a joining node
// does (agent.Enroll: nothing is written), and records it; label names
// the token in the history.
func (c *cluster) join(h *history, client, svc, label, token string, d time.Duration) (hostCreds, error) {
	o := op{Client: client, Op: "join", Via: svc, Arg: label, Start: time.Now()}
	e, err := agent.Enroll(c.t.Context(), agent.JoinConfig{Token: token, Remote: c.ip(svc) + ":2377", Timeout: d})
	if err == nil {
		o.NodeID, o.cert = e.Identity.NodeID, e.CertPEM
		o.Serial, err = serialOf(e.CertPEM)
	}
	h.record(o, err)
	return hostCreds{id: e.Identity, key: e.KeyPEM, cert: e.CertPEM, bundle: e.Bundle}, err
}

func serialOf(certPEM []byte) (string, error) {
	certs, err := ca.ParseCertificates(certPEM)
	if err != nil {
		return "", err
	}
	return certs[0].SerialNumber.Text(16), nil
}

// renewAs renews a host-joined node's certificate through svc over mutual
// TLS with its current one, following a redirect to the leader once, and
// records it.
func (c *cluster) renewAs(h *history, client, svc string, n hostCreds, d time.Duration) (hostCreds, error) {
	o := op{Client: client, Op: "renew", Via: svc, Arg: n.id.NodeID, Start: time.Now()}
	next, err := c.tryRenew(svc, n, d)
	if err == nil {
		o.NodeID, o.cert = next.id.NodeID, next.cert
		o.Serial, err = serialOf(next.cert)
	}
	h.record(o, err)
	return next, err
}

func (c *cluster) tryRenew(svc string, n hostCreds, d time.Duration) (hostCreds, error) {
	key, err := ca.GenerateKey(rand.Reader)
	if err != nil {
		return hostCreds{}, err
	}
	keyPEM, err := ca.MarshalKey(key)
	if err != nil {
		return hostCreds{}, err
	}
	csr, err := ca.NewCSR(rand.Reader, key, "")
	if err != nil {
		return hostCreds{}, err
	}
	cfg := clientTLS(c.t, nodeCredentials{cert: n.cert, key: n.key, root: n.bundle}, n.bundle)
	ctx, cancel := context.WithTimeout(c.t.Context(), d)
	defer cancel()
	addr := c.ip(svc) + ":2377"
	for hop := 0; ; hop++ {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			return hostCreds{}, err
		}
		resp, err := api.NewCAClient(conn).RenewNodeCertificate(ctx, &api.RenewNodeCertificateRequest{Csr: csr})
		conn.Close()
		if leader, ok := api.LeaderRedirect(err); ok && hop == 0 {
			addr = leader
			continue
		}
		if err != nil {
			return hostCreds{}, fmt.Errorf("RenewNodeCertificate at %s: %w", addr, err)
		}
		id, _, err := ca.VerifyPEM(resp.GetCertificate(), resp.GetBundle(), time.Now())
		if err != nil {
			return hostCreds{}, fmt.Errorf("renewed certificate from %s: %w", addr, err)
		}
		return hostCreds{id: id, key: keyPEM, cert: resp.GetCertificate(), bundle: resp.GetBundle()}, nil
	}
}

// removeNode runs node rm --force through svc's CLI, and records it.
func (c *cluster) removeNode(h *history, client, svc, id string, d time.Duration) error {
	o := op{Client: client, Op: "rm", Via: svc, Arg: id, Start: time.Now(), Result: "removed " + id}
	_, err := c.cliTimeout(d, svc, "node", "rm", "--force", id)
	h.record(o, err)
	return err
}

// rotateWorkerToken runs join-token --rotate -q worker through svc's CLI,
// records it (old and next label the tokens), and returns the new token.
func (c *cluster) rotateWorkerToken(h *history, client, svc, old, next string, d time.Duration) (string, error) {
	o := op{Client: client, Op: "rotate", Via: svc, Arg: old, Start: time.Now(), Result: "new token " + next}
	out, err := c.cliTimeout(d, svc, "join-token", "--rotate", "-q", "worker")
	token := strings.TrimSpace(out)
	if err == nil {
		if _, perr := ca.ParseToken(token); perr != nil {
			err = fmt.Errorf("join-token --rotate -q printed no token: %w", perr)
		}
	}
	h.record(o, err)
	return token, err
}

// localState is a manager's own applied state, read through a stale
// backup (the one read a follower answers from its own state) written to
// the shared tokens volume.
func (c *cluster) localState(svc string) (*fsm.State, error) {
	const pass = "/tokens/chaos-state.pass"
	file := "/tokens/chaos-state-" + svc + ".backup"
	if err := c.writeFile(svc, pass, []byte("chaos suite state check\n")); err != nil {
		return nil, err
	}
	if _, err := c.cli(svc, "backup", "--stale", "--out", file, "--passphrase-file", pass); err != nil {
		return nil, err
	}
	b, err := c.readFile(svc, file)
	if err != nil {
		return nil, err
	}
	_, st, err := backup.Read(bytes.NewReader(b), backup.Secret{Passphrase: []byte("chaos suite state check")})
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", svc, file, err)
	}
	return st, nil
}

// checkInvariants waits until the three managers have applied the same
// state, each its own (a stale backup of each), then checks the history
// against it:
//   - every acknowledged join is a node on every manager, unless its
//     removal was acknowledged, and then it is on none;
//   - no node ID and no certificate serial was issued twice;
//   - no certificate was handed to a node after its removal was
//     acknowledged;
//   - no token acknowledged as rotated admitted a join sent after that;
//   - every certificate issued chains to root, the root the cluster
//     trusted throughout (the scenarios do not rotate it), and names the
//     node it was issued to; every manager still has that root.
//
// It returns a one-line account for the SUMMARY.
func (c *cluster) checkInvariants(h *history, b baseline) string {
	c.t.Helper()
	t := c.t
	states := map[string]*fsm.State{}
	c.eventually("the 3 managers applied the same state", 2*waitBound, func() error {
		for _, m := range managers {
			st, err := c.localState(m)
			if err != nil {
				return err
			}
			states[m] = st
		}
		for _, m := range managers[1:] {
			if err := sameState(states[managers[0]], states[m]); err != nil {
				return fmt.Errorf("%s and %s: %w", managers[0], m, err)
			}
		}
		return nil
	})
	ops := h.all()
	removedAt := map[string]time.Time{} // acknowledged removals: when acknowledged
	for _, o := range ops {
		if o.Op == "rm" && o.OK {
			removedAt[o.Arg] = o.End
		}
	}
	initial := map[string]bool{}
	serials := map[string]string{}
	for _, n := range b.nodes {
		initial[n.ID] = true
		serials[n.CertSerial] = "initial node " + n.ID
	}
	ids := map[string]bool{}
	issued := 0
	for _, o := range ops {
		if !o.OK || (o.Op != "join" && o.Op != "renew") {
			continue
		}
		issued++
		if o.Op == "join" {
			if ids[o.NodeID] || initial[o.NodeID] {
				t.Errorf("node ID %s issued twice (again to a join through %s at %s)", o.NodeID, o.Via, o.Start.Format("15:04:05.000"))
			}
			ids[o.NodeID] = true
			for _, m := range managers {
				_, there := states[m].Nodes.Get(o.NodeID)
				if at, removed := removedAt[o.NodeID]; removed && there {
					t.Errorf("%s: node %s, whose removal was acknowledged at %s, is still a node", m, o.NodeID, at.Format("15:04:05.000"))
				} else if !removed && !there {
					t.Errorf("%s: the join of node %s acknowledged at %s through %s is lost: not a node", m, o.NodeID, o.End.Format("15:04:05.000"), o.Via)
				}
			}
		}
		if prev, dup := serials[o.Serial]; dup {
			t.Errorf("certificate serial %s issued twice: to %s and to %s %s (through %s)", o.Serial, prev, o.Op, o.NodeID, o.Via)
		}
		serials[o.Serial] = o.Op + " " + o.NodeID
		if at, removed := removedAt[o.NodeID]; removed && o.Start.After(at) {
			t.Errorf("%s through %s at %s handed node %s a certificate (serial %s) after its removal was acknowledged at %s", o.Op, o.Via, o.Start.Format("15:04:05.000"), o.NodeID, o.Serial, at.Format("15:04:05.000"))
		}
		id, _, err := ca.VerifyPEM(o.cert, b.root, o.End)
		if err != nil {
			t.Errorf("the certificate %s issued to %s by a %s through %s does not chain to the cluster's root %s: %v", o.Serial, o.NodeID, o.Op, o.Via, describeRoot(b.root), err)
		} else if id.NodeID != o.NodeID || id.Role != ca.RoleWorker {
			t.Errorf("the certificate %s of a %s for %s names %+v", o.Serial, o.Op, o.NodeID, id)
		}
	}
	probes := 0
	for _, r := range ops {
		if r.Op != "rotate" || !r.OK {
			continue
		}
		for _, o := range ops {
			if o.Op == "join" && o.Arg == r.Arg && o.Start.After(r.End) {
				probes++
				if o.OK {
					t.Errorf("token %s, acknowledged as rotated at %s, admitted node %s through %s at %s", r.Arg, r.End.Format("15:04:05.000"), o.NodeID, o.Via, o.Start.Format("15:04:05.000"))
				}
			}
		}
	}
	// The managers' own records: no serial twice, every removal made.
	st := states[managers[0]]
	seen := map[string]string{}
	for id, n := range st.Nodes.All() {
		for _, ci := range append([]fsm.CertInfo{n.Cert}, n.Prev...) {
			if other, dup := seen[ci.Serial]; dup && other != id {
				t.Errorf("the state records serial %s for nodes %s and %s", ci.Serial, other, id)
			}
			seen[ci.Serial] = id
		}
	}
	for id := range removedAt {
		if _, ok := st.Removed[id]; !ok {
			t.Errorf("node %s's removal was acknowledged, but the state does not refuse its certificates (not in Removed)", id)
		}
	}
	for _, m := range managers {
		now, err := c.cli(m, "ca")
		if err != nil {
			t.Error(err)
		} else if !sameCerts([]byte(now), b.root) {
			t.Errorf("%s: the root is %s, was %s: these scenarios do not rotate it", m, describeRoot([]byte(now)), describeRoot(b.root))
		}
	}
	return fmt.Sprintf("invariants: the 3 managers' own states agree at index %d (%d nodes, %d removed); %d certificates issued, IDs and serials unique, all chain to root sha256:%.16s; %d acknowledged removal(s) held; %d join(s) with a rotated token sent after the rotation, none admitted",
		st.Index, st.Nodes.Len(), len(st.Removed), issued, agent.BundleFingerprint(b.root), len(removedAt), probes)
}

// sameState compares what the invariants read of two managers' states.
func sameState(a, b *fsm.State) error {
	if a.Index != b.Index {
		return fmt.Errorf("applied index %d against %d", a.Index, b.Index)
	}
	if a.Nodes.Len() != b.Nodes.Len() || len(a.Removed) != len(b.Removed) {
		return fmt.Errorf("%d nodes, %d removed against %d, %d", a.Nodes.Len(), len(a.Removed), b.Nodes.Len(), len(b.Removed))
	}
	for id, n := range a.Nodes.All() {
		m, ok := b.Nodes.Get(id)
		if !ok || m.Cert.Serial != n.Cert.Serial {
			return fmt.Errorf("node %s: serial %s against %s (present: %v)", id, n.Cert.Serial, m.Cert.Serial, ok)
		}
	}
	return nil
}

// Faults from the host: tc netem and routes in a container's network
// namespace (nsenter -n runs the host's tc and ip there; the image has
// neither), and small file systems for data volumes.

// sbin returns the path of an administration command of the host.
func sbin(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return "/usr/sbin/" + name
}

// inNetns runs a host command in svc's network namespace.
func (c *cluster) inNetns(svc string, args ...string) (string, error) {
	id := c.containerID(svc)
	if id == "" {
		return "", fmt.Errorf("no container for %s", svc)
	}
	out, err := c.tryDocker("inspect", "-f", "{{.State.Pid}}", id)
	if err != nil {
		return "", err
	}
	pid := strings.TrimSpace(out)
	if pid == "" || pid == "0" {
		return "", fmt.Errorf("%s is not running", svc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err = runCmd(ctx, sbin("nsenter"), append([]string{"-t", pid, "-n", "--"}, args...)...)
	if err != nil {
		return out, fmt.Errorf("%s: nsenter -n %s: %w", svc, strings.Join(args, " "), err)
	}
	return out, nil
}

// errNoNetem is returned by netem when the kernel has no netem qdisc
// (sch_netem): some VM kernels ship without it.
var errNoNetem = errors.New("the kernel has no netem qdisc (sch_netem)")

// netem puts a netem qdisc on svc's eth0 (all it sends) and returns the
// function that removes it; that runs when the test ends too, however it
// ends (a container restarted since has a new namespace, without it).
func (c *cluster) netem(svc string, spec ...string) (remove func() error, err error) {
	c.t.Helper()
	tc := sbin("tc")
	if _, err := c.inNetns(svc, append([]string{tc, "qdisc", "add", "dev", "eth0", "root", "netem"}, spec...)...); err != nil {
		if strings.Contains(err.Error(), "qdisc kind is unknown") {
			return nil, fmt.Errorf("%w: %v", errNoNetem, err)
		}
		return nil, err
	}
	return c.undoing("the netem qdisc of "+svc, func() error {
		if !c.running(svc) {
			return nil
		}
		out, err := c.inNetns(svc, tc, "qdisc", "show", "dev", "eth0")
		if err == nil && !strings.Contains(out, "netem") {
			return nil
		}
		_, err = c.inNetns(svc, tc, "qdisc", "del", "dev", "eth0", "root")
		return err
	}), nil
}

// dropTo makes svc drop at random the given fraction of the packets it
// sends to each of dsts (iptables statistic match in its namespace: where
// netem is missing, loss without delay), and returns the function that
// removes the rules; that runs when the test ends too.
func (c *cluster) dropTo(svc string, fraction float64, dsts ...string) (remove func() error) {
	c.t.Helper()
	ipt := sbin("iptables")
	rule := func(verb, dst string) []string {
		return []string{ipt, verb, "OUTPUT", "-d", c.ip(dst) + "/32", "-m", "statistic", "--mode", "random", "--probability", strconv.FormatFloat(fraction, 'f', 3, 64), "-j", "DROP"}
	}
	for _, d := range dsts {
		if _, err := c.inNetns(svc, rule("-A", d)...); err != nil {
			c.t.Fatal(err)
		}
	}
	return c.undoing("the packet drops of "+svc, func() error {
		if !c.running(svc) {
			return nil
		}
		var errs error
		for _, d := range dsts {
			if _, err := c.inNetns(svc, rule("-C", d)...); err != nil {
				continue // gone already
			}
			if _, err := c.inNetns(svc, rule("-D", d)...); err != nil {
				errs = errors.Join(errs, err)
			}
		}
		return errs
	})
}

// undoing returns undo, made idempotent, and runs it when the test ends
// too (an error then fails the test).
func (c *cluster) undoing(what string, undo func() error) func() error {
	var once sync.Once
	var err error
	f := func() error {
		once.Do(func() { err = undo() })
		return err
	}
	c.t.Cleanup(func() {
		if err := f(); err != nil {
			c.t.Errorf("removing %s: %v", what, err)
		}
	})
	return f
}

// cut separates svc from each of others, both ways: a prohibit route to
// the other's address in each one's network namespace, so that neither
// can send to the other (the rest of the network, the host included,
// still reaches both). The returned heal deletes the routes; it runs when
// the test ends too.
func (c *cluster) cut(svc string, others ...string) (heal func() error) {
	c.t.Helper()
	ip := sbin("ip")
	type route struct{ in, to string }
	var routes []route
	for _, o := range others {
		routes = append(routes, route{svc, c.ip(o)}, route{o, c.ip(svc)})
	}
	for _, r := range routes {
		if _, err := c.inNetns(r.in, ip, "route", "add", "prohibit", r.to+"/32"); err != nil {
			c.t.Fatal(err)
		}
	}
	return c.undoing("the cut of "+svc, func() error {
		var errs error
		for _, r := range routes {
			if !c.running(r.in) {
				continue // a new namespace, without the route
			}
			out, err := c.inNetns(r.in, ip, "route", "show", r.to+"/32")
			if err == nil && !strings.Contains(out, "prohibit") {
				continue
			}
			if _, err := c.inNetns(r.in, ip, "route", "del", "prohibit", r.to+"/32"); err != nil {
				errs = errors.Join(errs, err)
			}
		}
		return errs
	})
}

// smallDisks mounts a tmpfs of size bytes on the host for each service and
// returns a compose file that binds each one's data volume to it, and the
// host directories. The file systems outlive container restarts (the
// volume is a bind mount); they are unmounted and removed when the test
// ends, after the project is down if newCluster comes after this.
func smallDisks(t *testing.T, size int64, svcs ...string) (override string, dirs map[string]string) {
	t.Helper()
	top, err := os.MkdirTemp("", fmt.Sprintf("%s%d-disks-", projectPrefix, os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	dirs = map[string]string{}
	t.Cleanup(func() {
		for _, d := range dirs {
			if out, err := exec.Command("umount", d).CombinedOutput(); err != nil {
				t.Logf("umount %s: %v: %s; lazily", d, err, out)
				exec.Command("umount", "-l", d).Run()
			}
		}
		if err := os.RemoveAll(top); err != nil {
			t.Errorf("removing %s: %v", top, err)
		}
	})
	var b strings.Builder
	b.WriteString("version: \"2.4\"\nvolumes:\n")
	for _, svc := range svcs {
		d := filepath.Join(top, svc)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "tmpfs", d).CombinedOutput(); err != nil {
			t.Fatalf("mount a %d-byte tmpfs on %s (the suite runs as root): %v: %s", size, d, err, out)
		}
		dirs[svc] = d
		fmt.Fprintf(&b, "  %s:\n    driver: local\n    driver_opts: {type: none, o: bind, device: %q}\n", svc, d)
	}
	override = filepath.Join(top, "disks.yml")
	if err := os.WriteFile(override, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return override, dirs
}

// fillDisk writes zeros to path until its file system is full (bounded:
// 1 GiB), and returns how much it wrote.
func fillDisk(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	var n int64
	for range 1 << 14 {
		w, err := f.Write(buf)
		n += int64(w)
		if errors.Is(err, syscall.ENOSPC) {
			return n
		}
		if err != nil {
			t.Fatalf("filling %s: %v", path, err)
		}
	}
	t.Fatalf("%s: the disk never filled (%d bytes written)", path, n)
	return n
}

// leaderWatch samples which leader some managers know, from a goroutine,
// until stopped.
type leaderWatch struct {
	stop chan struct{}
	done chan struct{}
	// Read after stop returns.
	samples, leaderless int
	longestGap          time.Duration
	leaders             map[string]bool
}

// watchLeader samples status on svcs in turn, one every pollEvery: a
// sample without a leader (none known, or no answer) opens a gap that
// the next sample with one closes.
func (c *cluster) watchLeader(svcs ...string) *leaderWatch {
	w := &leaderWatch{stop: make(chan struct{}), done: make(chan struct{}), leaders: map[string]bool{}}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(pollEvery)
		defer tick.Stop()
		var gapSince time.Time
		for i := 0; ; i++ {
			st, err := c.status(svcs[i%len(svcs)])
			now := time.Now()
			w.samples++
			if err != nil || st.LeaderID == "" {
				w.leaderless++
				if gapSince.IsZero() {
					gapSince = now
				}
			} else {
				w.leaders[st.LeaderID] = true
				if !gapSince.IsZero() {
					w.longestGap = max(w.longestGap, now.Sub(gapSince))
					gapSince = time.Time{}
				}
			}
			select {
			case <-w.stop:
				if !gapSince.IsZero() {
					w.longestGap = max(w.longestGap, time.Since(gapSince))
				}
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

// Stop stops the sampling and waits for it.
func (w *leaderWatch) Stop() {
	close(w.stop)
	<-w.done
}

// delayProxy is the delayproxy program (./delayproxy), built once for the
// scenarios that need latency where the kernel has no netem.
var delayProxy = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "qcachaos-delayproxy-")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "delayproxy")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", path, "./delayproxy")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build delayproxy: %w: %s", err, out)
	}
	return path, nil
})

// delayPort is where a delay proxy listens in a container's namespace;
// delayMark the firewall mark of its own connections (delayproxy's).
const (
	delayPort = "17999"
	delayMark = "0x71ca"
)

// delayTo delays the TCP connections svc opens to the API and Raft ports
// of each of dsts by delay plus up to jitter, each way: a delay proxy runs
// in svc's network namespace and iptables redirects those connections to
// it (latency where the kernel has no netem). Only connections opened
// afterwards go through it. It returns the function that removes it all;
// that runs when the test ends too.
func (c *cluster) delayTo(svc string, delay, jitter time.Duration, dsts ...string) (remove func() error, accepted func() int, err error) {
	c.t.Helper()
	bin, err := delayProxy()
	if err != nil {
		return nil, nil, err
	}
	out, err := c.tryDocker("inspect", "-f", "{{.State.Pid}}", c.containerID(svc))
	if err != nil {
		return nil, nil, err
	}
	pid := strings.TrimSpace(out)
	proxy := exec.Command(sbin("nsenter"), "-t", pid, "-n", "--", bin, "-listen", "0.0.0.0:"+delayPort, "-delay", delay.String(), "-jitter", jitter.String())
	stdout, err := proxy.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := proxy.Start(); err != nil {
		return nil, nil, err
	}
	var count atomic.Int64
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			switch sc.Text() {
			case "ready":
				close(ready)
			case "accepted":
				count.Add(1)
			}
		}
	}()
	stopProxy := func() {
		proxy.Process.Kill()
		proxy.Wait()
	}
	select {
	case <-ready:
	case <-time.After(cmdTimeout):
		stopProxy()
		return nil, nil, fmt.Errorf("%s: the delay proxy did not start within %v", svc, cmdTimeout)
	}
	ipt := sbin("iptables")
	rule := func(verb, dst, port string) []string {
		return []string{ipt, "-t", "nat", verb, "OUTPUT", "-p", "tcp", "-d", c.ip(dst) + "/32", "--dport", port,
			"-m", "mark", "!", "--mark", delayMark, "-j", "REDIRECT", "--to-ports", delayPort}
	}
	var added [][]string
	undo := func() error {
		var errs []error
		if c.running(svc) {
			for _, r := range added {
				if _, err := c.inNetns(svc, r...); err != nil {
					errs = append(errs, err)
				}
			}
		}
		stopProxy()
		return errors.Join(errs...)
	}
	for _, dst := range dsts {
		for _, port := range []string{"2377", "2378"} {
			if _, err := c.inNetns(svc, rule("-A", dst, port)...); err != nil {
				undo()
				return nil, nil, err
			}
			added = append(added, rule("-D", dst, port))
		}
	}
	return c.undoing("the delay proxy of "+svc, undo), func() int { return int(count.Load()) }, nil
}
