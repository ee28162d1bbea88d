package manager

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"slices"
	"time"

	"github.com/quorumca/quorumca/cfssl"
	"github.com/quorumca/quorumca/fsm"
)

// Defaults of the external CA client.
const (
	// DefaultExternalTimeout bounds one request to one external CA.
	DefaultExternalTimeout = cfssl.DefaultTimeout
	// DefaultExternalSkip is how long an external CA that failed is tried
	// only after the others.
	DefaultExternalSkip = cfssl.DefaultSkip
)

// externalCA is the client of the external CAs a cluster's state names
// (package cfssl speaks to them), with the configuration it was made from.
type externalCA struct {
	*cfssl.Client
	cas []fsm.ExternalCA
}

// newExternalCA returns the client of the external CAs cas. cert returns
// the certificate to present to a CA that asks for one (mutual TLS): this
// manager's, which follows its renewals; nil before it has one (init). A
// list the cluster could not take is refused with fsm.ErrBadCommand.
// observe, when set, hears how each request to each CA ended (metrics).
func newExternalCA(cas []fsm.ExternalCA, cert func() *tls.Certificate, timeout, skip time.Duration, now func() time.Time, observe func(url, result string)) (*externalCA, error) {
	if len(cas) == 0 {
		return nil, fmt.Errorf("%w: the cluster has no key and no external CA", fsm.ErrBadCommand)
	}
	if err := fsm.CheckExternal(cas); err != nil {
		return nil, err
	}
	cfg := cfssl.Config{Timeout: timeout, Skip: skip, ClientCertificate: cert, Now: now, Observe: observe}
	for _, c := range cas {
		cfg.Endpoints = append(cfg.Endpoints, cfssl.Endpoint{URL: c.URL, RootCAs: c.CACert, AuthKey: c.AuthKey})
	}
	client, err := cfssl.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", fsm.ErrBadCommand, err)
	}
	return &externalCA{Client: client, cas: cas}, nil
}

// same reports whether e was made from cas.
func (e *externalCA) same(cas []fsm.ExternalCA) bool {
	return slices.EqualFunc(e.cas, cas, func(a, b fsm.ExternalCA) bool {
		return a.Protocol == b.Protocol && a.URL == b.URL && bytes.Equal(a.CACert, b.CACert) && bytes.Equal(a.AuthKey, b.AuthKey)
	})
}

// close drops the idle connections.
func (e *externalCA) close() { e.Close() }
