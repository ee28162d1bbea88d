package manager

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/quorumca/quorumca/api"
	"github.com/quorumca/quorumca/ca"
	"github.com/quorumca/quorumca/fsm"
)

// JoinToken returns a role's join token, and rotates its secret first if
// asked.
func (s controlService) JoinToken(ctx context.Context, req *api.JoinTokenRequest) (*api.JoinTokenResponse, error) {
	m := s.m
	role, err := ca.ParseRole(req.GetRole())
	if err != nil {
		return nil, err
	}
	st := m.machine.State()
	if req.GetRotate() {
		secret, err := ca.NewSecret(m.cfg.Rand)
		if err != nil {
			return nil, err
		}
		if st, err = m.propose(ctx, fsm.Command{At: m.cfg.Now(), RotateSecret: &fsm.RotateSecret{Role: role, Secret: secret}}); err != nil {
			return nil, err
		}
		m.log.Info("join token rotated", "role", role, "by", callOf(ctx).actor())
	}
	return tokenResponse(st, role)
}

func tokenResponse(st *fsm.State, role ca.Role) (*api.JoinTokenResponse, error) {
	if !st.Initialized() {
		return nil, fsm.ErrNotInitialized
	}
	tok, err := st.Token(role)
	if err != nil {
		return nil, err
	}
	return &api.JoinTokenResponse{Token: tok.String(), Managers: managerAddrs(st)}, nil
}

// CreateToken adds a join token that expires or runs out.
func (s controlService) CreateToken(ctx context.Context, req *api.CreateTokenRequest) (*api.CreateTokenResponse, error) {
	m := s.m
	role, err := ca.ParseRole(req.GetRole())
	if err != nil {
		return nil, err
	}
	if req.GetTtlSeconds() < 0 || req.GetUses() < 0 {
		return nil, fmt.Errorf("%w: --ttl and --uses must not be negative", fsm.ErrBadCommand)
	}
	secret, err := ca.NewSecret(m.cfg.Rand)
	if err != nil {
		return nil, err
	}
	id, err := ca.NewID(m.cfg.Rand)
	if err != nil {
		return nil, err
	}
	id = id[:12]
	now := m.cfg.Now()
	t := fsm.ExtraToken{ID: id, Role: role, SecretHash: fsm.HashSecret(secret), UsesLeft: -1}
	if req.GetUses() > 0 {
		t.UsesLeft = int(req.GetUses())
	}
	if req.GetTtlSeconds() > 0 {
		t.ExpiresAt = now.Add(time.Duration(req.GetTtlSeconds()) * time.Second)
	}
	st, err := m.propose(ctx, fsm.Command{At: now, CreateToken: &fsm.CreateToken{Token: t}})
	if err != nil {
		return nil, err
	}
	tok, err := ca.NewToken(st.CA.Bundle, secret)
	if err != nil {
		return nil, err
	}
	m.log.Info("join token created", "token_id", id, "role", role, "uses", t.UsesLeft, "expires", t.ExpiresAt, "by", callOf(ctx).actor())
	return &api.CreateTokenResponse{Id: id, Token: tok.String(), Managers: managerAddrs(st)}, nil
}

// ListTokens lists the extra join tokens still usable (never their
// secrets).
func (s controlService) ListTokens(context.Context, *api.ListTokensRequest) (*api.ListTokensResponse, error) {
	st := s.m.machine.State()
	now := s.m.cfg.Now()
	resp := &api.ListTokensResponse{}
	for _, t := range sortedTokens(st) {
		if !t.Usable(now) {
			continue
		}
		at := &api.Token{Id: t.ID, Role: string(t.Role), UsesLeft: int32(t.UsesLeft), CreatedAt: t.CreatedAt.Unix()}
		if !t.ExpiresAt.IsZero() {
			at.ExpiresAt = t.ExpiresAt.Unix()
		}
		resp.Tokens = append(resp.Tokens, at)
	}
	return resp, nil
}

// RevokeToken removes an extra join token.
func (s controlService) RevokeToken(ctx context.Context, req *api.RevokeTokenRequest) (*api.RevokeTokenResponse, error) {
	if _, err := s.m.propose(ctx, fsm.Command{At: s.m.cfg.Now(), RevokeToken: &fsm.RevokeToken{ID: req.GetId()}}); err != nil {
		return nil, err
	}
	s.m.log.Info("join token revoked", "token_id", req.GetId(), "by", callOf(ctx).actor())
	return &api.RevokeTokenResponse{}, nil
}

func sortedTokens(st *fsm.State) []fsm.ExtraToken {
	out := make([]fsm.ExtraToken, 0, len(st.Tokens))
	for _, t := range st.Tokens {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b fsm.ExtraToken) int { return strings.Compare(a.ID, b.ID) })
	return out
}
