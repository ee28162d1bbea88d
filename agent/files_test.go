package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestWriteFileAtomic(t *testing.T) {
	tests := []struct {
		name     string
		existing []byte      // nil: no file before
		oldPerm  os.FileMode // of the existing file
		perm     os.FileMode
	}{
		{name: "new file 0600", perm: 0o600},
		{name: "new file 0644", perm: 0o644},
		{name: "replaces a file, tightening its mode", existing: []byte("old contents, longer than the new"), oldPerm: 0o644, perm: 0o600},
		{name: "replaces a file, loosening its mode", existing: []byte("old"), oldPerm: 0o600, perm: 0o644},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "file")
			if tt.existing != nil {
				if err := os.WriteFile(path, tt.existing, tt.oldPerm); err != nil {
					t.Fatal(err)
				}
			}
			data := []byte("new contents\n")
			if err := WriteFileAtomic(path, data, tt.perm); err != nil {
				t.Fatalf("WriteFileAtomic(%s, %v) = %v", path, tt.perm, err)
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("ReadFile() = %q, %v, want %q", got, err, data)
			}
			if got := mode(t, path); got != tt.perm {
				t.Errorf("mode = %v, want %v", got, tt.perm)
			}
			if got := names(readDir(t, dir)); !slices.Equal(got, []string{"file"}) {
				t.Errorf("directory holds %v, want only the file (no temporary files)", got)
			}
		})
	}
}

// TestWriteFileAtomicFails: a write that cannot complete leaves what was
// there and no temporary file.
func TestWriteFileAtomicFails(t *testing.T) {
	t.Run("target is a directory", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(dir, "sub")
		if err := os.Mkdir(target, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(target, "keep"), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := WriteFileAtomic(target, []byte("data"), 0o600); err == nil {
			t.Fatalf("WriteFileAtomic(over a directory) = nil, want an error")
		}
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) != 1 || !entries[0].IsDir() {
			t.Errorf("directory after a failed write = %v, %v, want only the directory that was there", entries, err)
		}
	})
	t.Run("no such directory", func(t *testing.T) {
		dir := t.TempDir()
		if err := WriteFileAtomic(filepath.Join(dir, "missing", "file"), []byte("data"), 0o600); err == nil {
			t.Fatalf("WriteFileAtomic(in a missing directory) = nil, want an error")
		}
		if got := names(readDir(t, dir)); len(got) != 0 {
			t.Errorf("directory after a failed write holds %v, want nothing", got)
		}
	})
}
