// Package chaos drives the docker compose cluster (docker-compose.yml: 3
// managers, 3 workers, each node a container of the FROM-scratch image)
// through failures: a leader killed mid-rotation, a partitioned manager, a
// worker paused through a rotation, a restart of everything, a removed
// node's certificate. Every scenario brings up its own fresh cluster, and
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
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/quorumca/quorumca/agent"
	"github.com/quorumca/quorumca/ca"
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
	net     string // the /24 prefix, e.g. 172.28.60
}

// newCluster brings up a fresh cluster for the test and waits until it is
// healthy; it is taken down (volumes too) when the test ends, however it
// ends.
func newCluster(t *testing.T, name string, index int) *cluster {
	t.Helper()
	requireChaos(t)
	prefix, err := freeNet(index)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, project: fmt.Sprintf("%s%d%s", projectPrefix, os.Getpid(), name), net: prefix}
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
