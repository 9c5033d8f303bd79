package main
import (
 _ "github.com/emersion/go-smtp"
 _ "github.com/emersion/go-msgauth/dkim"
 _ "go.etcd.io/bbolt"
 _ "github.com/emersion/go-message/mail"
 _ "github.com/rs/zerolog"
 _ "github.com/spf13/cobra"
 _ "go.yaml.in/yaml/v3"
 _ "github.com/schollz/progressbar/v3"
 _ "golang.org/x/net/idna"
 _ "golang.org/x/term"
)
func main(){}
