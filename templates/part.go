package templates

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/emersion/go-message/mail"
)

// Part returns the decoded body of the first part of a rendered message
// whose media type is mediaType ("text/html", "text/plain"), read with
// go-message (transfer encodings undone, charset decoded).
func Part(msg []byte, mediaType string) ([]byte, error) {
	r, err := mail.CreateReader(bytes.NewReader(msg))
	if err != nil {
		return nil, fmt.Errorf("templates: read message: %w", err)
	}
	defer r.Close()
	for {
		p, err := r.NextPart()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("templates: the message has no %s part", mediaType)
		}
		if err != nil {
			return nil, fmt.Errorf("templates: read message part: %w", err)
		}
		h, ok := p.Header.(*mail.InlineHeader)
		if !ok {
			continue
		}
		if t, _, err := h.ContentType(); err == nil && t == mediaType {
			return io.ReadAll(p.Body)
		}
	}
}
