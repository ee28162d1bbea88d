package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// externalCAUsage is the help of --external-ca.
const externalCAUsage = "external CA that signs node certificates, as protocol=cfssl,url=https://HOST:PORT[,cacert=FILE][,authkey=FILE]; repeat for fallbacks, tried in order (cacert: PEM that verifies the CA's HTTPS certificate; authkey: the hex key of CFSSL's auth_keys, to sign through authsign)"

// parseExternalCAs parses the --external-ca values: comma-separated
// key=value pairs, protocol (only cfssl), url (https), cacert (a PEM
// file, read here) and authkey (a file holding the hex key, read here).
func parseExternalCAs(specs []string) ([]fsm.ExternalCA, error) {
	var out []fsm.ExternalCA
	for _, spec := range specs {
		e := fsm.ExternalCA{}
		seen := map[string]bool{}
		for _, part := range strings.Split(spec, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
			if !ok || v == "" {
				return nil, fmt.Errorf("--external-ca %q: %q is not key=value; write protocol=cfssl,url=https://HOST:PORT[,cacert=FILE][,authkey=FILE]", spec, part)
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
			case "authkey":
				key, err := readAuthKey(v)
				if err != nil {
					return nil, err
				}
				e.AuthKey = key
			default:
				return nil, fmt.Errorf("--external-ca %q: unknown key %q; the keys are protocol, url, cacert and authkey", spec, k)
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

// readAuthKey reads the auth key of --external-ca authkey=FILE: the hex key
// of CFSSL's auth_keys entry ("type": "standard"), as CFSSL reads a
// "file:" key (surrounding white space ignored). Its errors never show the
// file's contents.
func readAuthKey(file string) ([]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--external-ca authkey: %w", err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("--external-ca authkey %s: the file must hold the key in hex, as CFSSL's auth_keys do", file)
	}
	if n := len(key); n < fsm.MinAuthKey || n > fsm.MaxAuthKey {
		return nil, fmt.Errorf("--external-ca authkey %s: the key is %d bytes; give %d to %d bytes (%d to %d hex digits)", file, n, fsm.MinAuthKey, fsm.MaxAuthKey, 2*fsm.MinAuthKey, 2*fsm.MaxAuthKey)
	}
	return key, nil
}

// externalToAPI lists the external CAs for a request, auth keys included.
func externalToAPI(in []fsm.ExternalCA) []*api.ExternalCA {
	var out []*api.ExternalCA
	for _, e := range in {
		out = append(out, &api.ExternalCA{Protocol: e.Protocol, Url: e.URL, CaCert: e.CACert, AuthKey: e.AuthKey})
	}
	return out
}

// describeExternal is one external CA of an answer, for people: answers
// never carry an auth key, only whether one is set.
func describeExternal(e *api.ExternalCA) string {
	s := e.GetProtocol() + " " + e.GetUrl()
	if len(e.GetAuthKey()) > 0 {
		s += " (authkey: set)"
	}
	return s
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
