package api

import (
	"bytes"
	"errors"
	"io"
)

// ReceiveBackup reads a Backup stream to its end: what the first chunk
// says, and the state's bytes (fsm's snapshot encoding).
func ReceiveBackup(stream Control_BackupClient) (*BackupInfo, []byte, error) {
	var info *BackupInfo
	var data bytes.Buffer
	for {
		chunk, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		if i := chunk.GetInfo(); i != nil {
			if info != nil {
				return nil, nil, errors.New("api: a Backup stream named its state twice")
			}
			info = i
		}
		data.Write(chunk.GetData())
	}
	if info == nil {
		return nil, nil, errors.New("api: the Backup stream named no state")
	}
	return info, data.Bytes(), nil
}
