// Command gomsgauth verifies every DKIM-Signature of signed .eml files with
// go-msgauth (Debian's golang-github-emersion-go-msgauth-dev), a second
// verifier independent of dkimpy and of the relay's mail-auth. Records come
// from `dkim-relay keys dns --json`, never from real DNS.
//
// Usage: gomsgauth RECORDS.json [LABEL=]DIR...
//
// It prints one line per signature in the interop harness's format,
// "PASS|FAIL LABEL go-msgauth-ALG FILE [DETAIL]" (a message with no signature
// go-msgauth can read is one FAIL line), then "go-msgauth LABEL ALG: N passed,
// N failed" per group on standard error, and exits 1 on any failure.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/emersion/go-msgauth/dkim"
)

type record struct {
	Name  string          `json:"name"`
	Value json.RawMessage `json:"value"`
}

func loadRecords(path string) (map[string][]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var recs []record
	if err := json.Unmarshal(raw, &recs); err != nil {
		return nil, err
	}
	txt := map[string][]string{}
	for _, r := range recs {
		var value string
		if err := json.Unmarshal(r.Value, &value); err != nil {
			var parts []string
			if err := json.Unmarshal(r.Value, &parts); err != nil {
				return nil, fmt.Errorf("%s: value is neither a string nor a list", r.Name)
			}
			value = strings.Join(parts, "")
		}
		key := strings.ToLower(strings.TrimSuffix(r.Name, "."))
		txt[key] = append(txt[key], value)
	}
	return txt, nil
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: gomsgauth RECORDS.json [LABEL=]DIR...")
		os.Exit(2)
	}
	txt, err := loadRecords(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "gomsgauth:", err)
		os.Exit(2)
	}
	options := &dkim.VerifyOptions{
		LookupTXT: func(domain string) ([]string, error) {
			values, ok := txt[strings.ToLower(strings.TrimSuffix(domain, "."))]
			if !ok {
				return nil, fmt.Errorf("no TXT record for %s", domain)
			}
			return values, nil
		},
	}
	type key struct{ label, alg string }
	counts := map[key][2]int{}
	failed := false
	for _, arg := range os.Args[2:] {
		label, dir := "", arg
		if i := strings.Index(arg, "="); i >= 0 {
			label, dir = arg[:i], arg[i+1:]
		}
		files, _ := filepath.Glob(filepath.Join(dir, "*.eml"))
		sort.Strings(files)
		for _, file := range files {
			raw, err := os.ReadFile(file)
			if err != nil {
				fmt.Printf("FAIL %s go-msgauth %s read: %v\n", label, filepath.Base(file), err)
				failed = true
				continue
			}
			verifications, err := dkim.VerifyWithOptions(bytes.NewReader(raw), options)
			if err != nil || len(verifications) == 0 {
				fmt.Printf("FAIL %s go-msgauth %s no signature verified: %v\n", label, filepath.Base(file), err)
				failed = true
				continue
			}
			algs := signatureAlgorithms(raw)
			for i, v := range verifications {
				// go-msgauth reports in the order of the fields in the header.
				alg := "unknown"
				if i < len(algs) {
					alg = algs[i]
				}
				k := key{label, alg}
				c := counts[k]
				if v.Err != nil {
					c[1]++
					failed = true
					fmt.Printf("FAIL %s go-msgauth-%s %s d=%s: %v\n", label, alg, filepath.Base(file), v.Domain, v.Err)
				} else {
					c[0]++
					fmt.Printf("PASS %s go-msgauth-%s %s\n", label, alg, filepath.Base(file))
				}
				counts[k] = c
			}
		}
	}
	keys := make([]key, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].label+keys[i].alg < keys[j].label+keys[j].alg
	})
	for _, k := range keys {
		fmt.Fprintf(os.Stderr, "go-msgauth %s %s: %d passed, %d failed\n", k.label, k.alg, counts[k][0], counts[k][1])
	}
	if failed {
		os.Exit(1)
	}
}

// signatureAlgorithms returns the a= tag of each DKIM-Signature field, top to
// bottom, the order in which go-msgauth returns its verifications.
func signatureAlgorithms(raw []byte) []string {
	head := raw
	if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
		head = raw[:i]
	}
	unfolded := strings.NewReplacer("\r\n ", " ", "\r\n\t", " ").Replace(string(head))
	var algs []string
	for _, line := range strings.Split(unfolded, "\r\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok || !strings.EqualFold(strings.TrimSpace(name), "DKIM-Signature") {
			continue
		}
		alg := "unknown"
		for _, tag := range strings.Split(value, ";") {
			k, v, _ := strings.Cut(tag, "=")
			if strings.TrimSpace(k) == "a" {
				alg = strings.Join(strings.Fields(v), "")
			}
		}
		algs = append(algs, alg)
	}
	return algs
}
