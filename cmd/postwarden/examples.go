package main

// examples are the help texts' examples, by command path, for the verbs
// that set none of their own (strictUsage puts them in; a test checks
// every verb has some).
var examples = map[string]string{
	"postwarden audit ls":     "  postwarden audit ls --since 7d\n  postwarden --json audit ls --since 2026-11-01",
	"postwarden audit verify": "  postwarden audit verify\n  postwarden audit verify --cluster",
	"postwarden bounce parse": "  postwarden bounce parse dsn.eml\n  postwarden --json bounce parse bounces/*.eml",

	"postwarden campaign pause":    "  postwarden campaign pause spring-2026 --reason \"complaints from one customer\"",
	"postwarden campaign report":   "  postwarden campaign report spring-2026                      # writes report-spring-2026.html\n  postwarden campaign report spring-2026 --out /tmp/dpo.html\n  postwarden --json campaign report spring-2026 > spring.json",
	"postwarden campaign resume":   "  postwarden campaign resume spring-2026 --reason \"list cleaned\"",
	"postwarden campaign send":     "  postwarden campaign send campaigns/spring.yaml\n  postwarden campaign send --force campaigns/spring.yaml   # despite failed preflight checks\n  postwarden campaign send --test-to me@example.com campaigns/spring.yaml\n  postwarden campaign send --no-wait campaigns/spring.yaml   # a daemon delivers",
	"postwarden campaign status":   "  postwarden campaign status spring-2026\n  postwarden --json campaign status spring-2026",
	"postwarden campaign validate": "  postwarden campaign validate campaigns/spring.yaml\n  postwarden campaign validate --offline campaigns/spring.yaml   # no DNS checks\n  postwarden --json campaign validate campaigns/spring.yaml",

	"postwarden check-dns":      "  postwarden check-dns example.com\n  postwarden --json check-dns bounce.example.com",
	"postwarden cluster status": "  postwarden cluster status\n  postwarden --json cluster status",
	"postwarden db check":       "  postwarden db check",
	"postwarden db compact":     "  postwarden db compact",
	"postwarden db init":        "  postwarden db init queue   # the old file is kept aside",
	"postwarden db prune":       "  postwarden db prune",
	"postwarden dkim keygen":    "  postwarden dkim keygen --domain example.com --selector pw1\n  postwarden dkim keygen --domain example.com --selector pw2 --type ed25519",
	"postwarden dns":            "  postwarden dns\n  postwarden --json dns",

	"postwarden providers explain": "  postwarden providers explain acme.example",
	"postwarden providers ls":      "  postwarden providers ls",

	"postwarden queue bounce":     "  postwarden queue bounce 0187c2a4f1d00003 --reason \"address confirmed gone\"",
	"postwarden queue delete":     "  postwarden queue delete --campaign spring-2026 --reason \"sent by mistake\"",
	"postwarden queue hold":       "  postwarden queue hold --domain acme.example",
	"postwarden queue release":    "  postwarden queue release --domain acme.example",
	"postwarden queue resume":     "  postwarden queue resume --domain acme.example",
	"postwarden queue retry":      "  postwarden queue retry 0187c2a4f1d00003\n  postwarden queue retry --domain acme.example --state deferred",
	"postwarden queue show":       "  postwarden queue show 0187c2a4f1d00003",
	"postwarden queue stats":      "  postwarden queue stats\n  postwarden queue stats --cluster",
	"postwarden queue suspend":    "  postwarden queue suspend --domain acme.example --duration 2h --reason \"421 from their gateway\"",
	"postwarden queue suspend ls": "  postwarden queue suspend ls",
	"postwarden queue top":        "  postwarden queue top",
	"postwarden serve":            "  postwarden serve\n  postwarden -c /etc/postwarden/postwarden.yaml serve",

	"postwarden subject erase":      "  postwarden subject erase ana@acme.example --reason \"DSR-2026-014\"",
	"postwarden subject export":     "  postwarden subject export ana@acme.example --reason \"DSR-2026-013\" > ana.json\n  postwarden subject export ana@acme.example --reason \"DSR-2026-013\" --format csv",
	"postwarden subject restrict":   "  postwarden subject restrict ana@acme.example --reason \"objection, DSR-2026-015\"",
	"postwarden subject unrestrict": "  postwarden subject unrestrict ana@acme.example --reason \"objection withdrawn\"",

	"postwarden subscribers import": "  postwarden subscribers import crm-export.csv --list product-news --source crm",
	"postwarden subscribers ls":     "  postwarden subscribers ls --list product-news",

	"postwarden suppress add":    "  postwarden suppress add ana@acme.example --reason unsubscribed\n  postwarden suppress add @globex.example --list product-news",
	"postwarden suppress check":  "  postwarden suppress check ana@acme.example",
	"postwarden suppress import": "  postwarden suppress import old-unsubscribes.csv --reason unsubscribed",
	"postwarden suppress ls":     "  postwarden suppress ls --list product-news",
	"postwarden suppress remove": "  postwarden suppress remove ana@acme.example",
}
