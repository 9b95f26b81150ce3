package smtpkit_test

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"go/importer"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

var updateAPI = flag.Bool("update", false, "rewrite "+apiFile+" from the exported API of the library packages")

// apiFile lists every exported identifier of the module's library
// packages (every package but main packages and internal ones), one per
// line, as the Go project's api/*.txt files do; TestAPI checks it.
const apiFile = "api/smtpkit.txt"

// apiTargets are the platforms whose exported API is listed: a name that
// exists on only some of them is listed with those in brackets.
var apiTargets = []struct{ goos, goarch string }{
	{"linux", "amd64"},
	{"js", "wasm"},
}

// TestAPIMatchesListing: the exported API of the library packages, as
// the compiler sees it, against api/smtpkit.txt. A change to the API
// fails here until the listing is regenerated with
//
//	go test -run '^TestAPIMatchesListing$' -update .
//
// so that every API change shows as a diff of that file in review.
func TestAPIMatchesListing(t *testing.T) {
	if runtime.GOOS == "js" || runtime.GOOS == "wasip1" {
		t.Skip("needs the go command")
	}
	got := apiListing(t)
	if *updateAPI {
		if err := os.MkdirAll(filepath.Dir(apiFile), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(apiFile, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(apiFile)
	if err != nil {
		t.Fatalf("%v: generate it with: go test -run '^TestAPIMatchesListing$' -update .", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the exported API differs from %s (- listed, + now):\n%s\nIf the change is meant, regenerate the listing and commit it:\n\tgo test -run '^TestAPIMatchesListing$' -update .",
			apiFile, lineDiff(string(want), string(got)))
	}
}

// apiListing returns the listing of every library package's exported
// API, on every target.
func apiListing(t *testing.T) []byte {
	pkgs := libraryPackages(t)
	on := map[string][]string{} // line -> the targets it holds on
	for _, tg := range apiTargets {
		exports := exportData(t, tg.goos, tg.goarch, pkgs)
		imp := importer.ForCompiler(token.NewFileSet(), "gc", func(path string) (io.ReadCloser, error) {
			f, ok := exports[path]
			if !ok {
				return nil, fmt.Errorf("no export data for %s", path)
			}
			return os.Open(f)
		})
		for _, path := range pkgs {
			if _, ok := exports[path]; !ok {
				continue // the package does not build there
			}
			p, err := imp.Import(path)
			if err != nil {
				t.Fatalf("%s/%s: %v", tg.goos, tg.goarch, err)
			}
			for _, l := range packageAPI(p) {
				on[l] = append(on[l], tg.goos+"/"+tg.goarch)
			}
		}
	}
	var lines []string
	for l, tgs := range on {
		if len(tgs) < len(apiTargets) {
			l += " [" + strings.Join(tgs, ", ") + "]"
		}
		lines = append(lines, l)
	}
	slices.Sort(lines)
	var b bytes.Buffer
	b.WriteString("# The exported API of smtpkit's library packages, checked by TestAPIMatchesListing.\n")
	b.WriteString("# Regenerate: go test -run '^TestAPIMatchesListing$' -update .\n")
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// libraryPackages returns the import paths of the module's packages that
// are neither main packages nor internal.
func libraryPackages(t *testing.T) []string {
	out := goCmd(t, nil, "list", "-f", "{{.ImportPath}} {{.Name}}", "./...")
	var pkgs []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		path, name, _ := strings.Cut(l, " ")
		if name == "main" || strings.Contains(path+"/", "/internal/") {
			continue
		}
		pkgs = append(pkgs, path)
	}
	return pkgs
}

// exportData returns the export data file of pkgs and of everything they
// import, built for goos/goarch, by import path; a package that does not
// build there is left out.
func exportData(t *testing.T, goos, goarch string, pkgs []string) map[string]string {
	env := []string{"GOOS=" + goos, "GOARCH=" + goarch, "CGO_ENABLED=0"}
	args := append([]string{"list", "-e", "-export", "-deps", "-f", "{{if not .Error}}{{.ImportPath}}\t{{.Export}}{{end}}"}, pkgs...)
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(goCmd(t, env, args...)))
	for sc.Scan() {
		if path, file, ok := strings.Cut(sc.Text(), "\t"); ok && file != "" {
			m[path] = file
		}
	}
	return m
}

func goCmd(t *testing.T, env []string, args ...string) string {
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// packageAPI returns one line per exported name of p: constants with
// their type and value, variables, functions and methods with their
// signatures (parameter names left out), types with their kind, and
// each exported field and interface method.
func packageAPI(p *types.Package) []string {
	qual := func(other *types.Package) string {
		if other == p {
			return ""
		}
		return other.Name()
	}
	var tstr func(t types.Type) string
	tstr = func(t types.Type) string {
		if sig, ok := t.(*types.Signature); ok {
			return "func" + sigString(sig, tstr) // without parameter names
		}
		return types.TypeString(t, qual)
	}
	prefix := "pkg " + p.Path() + ", "
	var lines []string
	add := func(format string, args ...any) { lines = append(lines, prefix+fmt.Sprintf(format, args...)) }
	scope := p.Scope()
	for _, name := range scope.Names() {
		obj := scope.Lookup(name)
		if !obj.Exported() {
			continue
		}
		switch o := obj.(type) {
		case *types.Const:
			add("const %s %s = %s", name, tstr(o.Type()), o.Val().ExactString())
		case *types.Var:
			add("var %s %s", name, tstr(o.Type()))
		case *types.Func:
			add("func %s%s", name, sigString(o.Type().(*types.Signature), tstr))
		case *types.TypeName:
			if o.IsAlias() {
				add("type %s = %s", name, tstr(o.Type()))
				continue
			}
			named := o.Type().(*types.Named)
			switch u := named.Underlying().(type) {
			case *types.Struct:
				add("type %s struct", name)
				for i := range u.NumFields() {
					f := u.Field(i)
					switch {
					case f.Embedded():
						add("type %s struct, embedded %s", name, tstr(f.Type()))
					case f.Exported():
						add("type %s struct, %s %s", name, f.Name(), tstr(f.Type()))
					}
				}
			case *types.Interface:
				add("type %s interface", name)
				for i := range u.NumEmbeddeds() {
					add("type %s interface, embedded %s", name, tstr(u.EmbeddedType(i)))
				}
				for i := range u.NumExplicitMethods() {
					m := u.ExplicitMethod(i)
					if m.Exported() {
						add("type %s interface, %s%s", name, m.Name(), sigString(m.Type().(*types.Signature), tstr))
					}
				}
			default:
				add("type %s %s", name, tstr(u))
			}
			for i := range named.NumMethods() {
				m := named.Method(i)
				if !m.Exported() {
					continue
				}
				sig := m.Type().(*types.Signature)
				recv := name
				if _, ptr := sig.Recv().Type().(*types.Pointer); ptr {
					recv = "*" + name
				}
				add("method (%s) %s%s", recv, m.Name(), sigString(sig, tstr))
			}
		}
	}
	return lines
}

// sigString formats sig without its parameter names.
func sigString(sig *types.Signature, tstr func(types.Type) string) string {
	list := func(tup *types.Tuple, variadic bool) []string {
		var s []string
		for i := range tup.Len() {
			ty := tup.At(i).Type()
			if variadic && i == tup.Len()-1 {
				s = append(s, "..."+tstr(ty.(*types.Slice).Elem()))
				continue
			}
			s = append(s, tstr(ty))
		}
		return s
	}
	out := "(" + strings.Join(list(sig.Params(), sig.Variadic()), ", ") + ")"
	switch res := list(sig.Results(), false); len(res) {
	case 0:
	case 1:
		out += " " + res[0]
	default:
		out += " (" + strings.Join(res, ", ") + ")"
	}
	return out
}

// lineDiff lists the lines only in a (with "-") and only in b (with
// "+"): the listing is sorted, so that is the whole change.
func lineDiff(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ina, inb := in(a), in(b)
	var d []string
	for _, l := range strings.Split(a, "\n") {
		if !inb[l] {
			d = append(d, "-"+l)
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if !ina[l] {
			d = append(d, "+"+l)
		}
	}
	return strings.Join(d, "\n")
}
