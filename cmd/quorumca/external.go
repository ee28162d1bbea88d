package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// externalCAUsage is the help of --external-ca.
const externalCAUsage = "external CA that signs node certificates, as protocol=cfssl,url=https://HOST:PORT[,cacert=FILE]; repeat for fallbacks, tried in order (cacert: PEM that verifies the CA's HTTPS certificate)"

// parseExternalCAs parses the --external-ca values: comma-separated
// key=value pairs, protocol (only cfssl), url (https) and cacert (a PEM
// file, read here).
func parseExternalCAs(specs []string) ([]fsm.ExternalCA, error) {
	var out []fsm.ExternalCA
	for _, spec := range specs {
		e := fsm.ExternalCA{}
		seen := map[string]bool{}
		for _, part := range strings.Split(spec, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
			if !ok || v == "" {
				return nil, fmt.Errorf("--external-ca %q: %q is not key=value; write protocol=cfssl,url=https://HOST:PORT[,cacert=FILE]", spec, part)
			}
			k = strings.ToLower(k)
			if seen[k] {
				return nil, fmt.Errorf("--external-ca %q: %s is given twice; give one CA per --external-ca", spec, k)
			}
			seen[k] = true
			switch k {
			case "protocol":
				e.Protocol = strings.ToLower(v)
			case "url":
				e.URL = v
			case "cacert":
				pem, err := os.ReadFile(v)
				if err != nil {
					return nil, fmt.Errorf("--external-ca cacert: %w", err)
				}
				if _, err := ca.ParseCertificates(pem); err != nil {
					return nil, fmt.Errorf("--external-ca cacert %s: %w", v, err)
				}
				e.CACert = pem
			default:
				return nil, fmt.Errorf("--external-ca %q: unknown key %q; the keys are protocol, url and cacert", spec, k)
			}
		}
		if e.Protocol == "" {
			return nil, fmt.Errorf("--external-ca %q: give protocol=cfssl", spec)
		}
		if e.URL == "" {
			return nil, fmt.Errorf("--external-ca %q: give url=https://HOST:PORT", spec)
		}
		out = append(out, e)
	}
	if err := fsm.CheckExternal(out); err != nil {
		return nil, fmt.Errorf("--external-ca: %w", err)
	}
	return out, nil
}

func externalToAPI(in []fsm.ExternalCA) []*api.ExternalCA {
	var out []*api.ExternalCA
	for _, e := range in {
		out = append(out, &api.ExternalCA{Protocol: e.Protocol, Url: e.URL, CaCert: e.CACert})
	}
	return out
}

// readExternalCert reads --ca-cert for an external CA: its certificate and
// chain up to the root, checked as the import rules say.
func readExternalCert(certFile string) ([]byte, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-cert: %w", err)
	}
	if _, err := ca.ImportExternal(certPEM, time.Now()); err != nil {
		return nil, fmt.Errorf("--ca-cert: %w", err)
	}
	return certPEM, nil
}
