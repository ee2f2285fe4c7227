// probe: the one static program the local node's images run (no registry is reachable).
//
//	probe pause                      the pod sandbox: sleep until SIGTERM, reap children
//	probe watch [-every D] [-exit-after D] PATH...
//	                                 print one JSON line each time a file under PATH appears,
//	                                 changes or goes: its mode, size and a SHA-256 fingerprint
//	                                 (never the content)
//	probe agent [-work D] FILE       the demo's agent: read the value, print its fingerprint and
//	                                 its claims if it is a JWT, work, exit 0
package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe pause | watch [-every D] [-exit-after D] PATH... | agent [-work D] FILE")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "pause":
		pause()
	case "watch":
		watch(os.Args[2:])
	case "agent":
		agent(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "probe: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

func pause() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			return
		}
		for { // as PID 1 of a pod: reap whatever was orphaned into it
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

// seen is what one file looked like at one moment.
type seen struct {
	Mode   string `json:"mode"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

type event struct {
	Time float64 `json:"t"`
	Path string  `json:"path"`
	Gone bool    `json:"gone,omitempty"`
	*seen
}

// snapshot reads every regular file under the roots, following the kubelet's symlinks but
// skipping its "..data"-style internals, which hold the same files again.
func snapshot(roots []string) map[string]seen {
	files := map[string]seen{}
	for _, root := range roots {
		_ = filepath.WalkDir(root, func(path string, entry fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if strings.HasPrefix(entry.Name(), "..") {
				if entry.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			info, err := os.Stat(path) // follows the symlink to the current ..data
			if err != nil || info.IsDir() {
				return nil
			}
			content, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			digest := sha256.Sum256(content)
			files[path] = seen{
				Mode:   fmt.Sprintf("%04o", info.Mode().Perm()),
				Size:   info.Size(),
				SHA256: hex.EncodeToString(digest[:])[:16],
			}
			return nil
		})
	}
	return files
}

func now() float64 { return float64(time.Now().UnixNano()) / 1e9 }

func emit(e event) {
	line, _ := json.Marshal(e)
	fmt.Println(string(line))
}

func watch(args []string) {
	flags := flag.NewFlagSet("watch", flag.ExitOnError)
	every := flags.Duration("every", 100*time.Millisecond, "how often to look")
	exitAfter := flags.Duration("exit-after", 0, "exit 0 after this long (0: run until stopped)")
	_ = flags.Parse(args)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	var deadline <-chan time.Time
	if *exitAfter > 0 {
		deadline = time.After(*exitAfter)
	}
	last := map[string]seen{}
	ticker := time.NewTicker(*every)
	defer ticker.Stop()
	for {
		current := snapshot(flags.Args())
		paths := make([]string, 0, len(current))
		for path := range current {
			paths = append(paths, path)
		}
		sort.Strings(paths)
		for _, path := range paths {
			if previous, ok := last[path]; !ok || previous != current[path] {
				s := current[path]
				emit(event{Time: now(), Path: path, seen: &s})
			}
		}
		for path := range last {
			if _, ok := current[path]; !ok {
				emit(event{Time: now(), Path: path, Gone: true})
			}
		}
		last = current
		select {
		case <-ticker.C:
		case <-deadline:
			return
		case <-signals:
			return
		}
	}
}

func agent(args []string) {
	flags := flag.NewFlagSet("agent", flag.ExitOnError)
	work := flags.Duration("work", 3*time.Second, "how long the task takes")
	_ = flags.Parse(args)
	path := flags.Arg(0)
	if path == "" {
		fmt.Fprintln(os.Stderr, "agent: which file holds the credential?")
		os.Exit(2)
	}
	path = os.ExpandEnv(path)
	info, err := os.Stat(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "agent: %v\n", err)
		os.Exit(1)
	}
	value, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "agent: %v\n", err)
		os.Exit(1)
	}
	digest := sha256.Sum256(value)
	fmt.Printf("agent: read %s (mode %04o, %d bytes), sha256 fingerprint %s\n",
		path, info.Mode().Perm(), len(value), hex.EncodeToString(digest[:])[:16])
	if parts := strings.Split(strings.TrimSpace(string(value)), "."); len(parts) == 3 {
		if payload, err := base64.RawURLEncoding.DecodeString(parts[1]); err == nil {
			var claims map[string]any
			if json.Unmarshal(payload, &claims) == nil {
				for _, name := range []string{"sub", "aud", "scope", "exp"} {
					if v, ok := claims[name]; ok {
						shown, _ := json.Marshal(v)
						fmt.Printf("agent: claim %s = %s\n", name, shown)
					}
				}
			}
		}
	}
	fmt.Printf("agent: working for %s\n", *work)
	time.Sleep(*work)
	fmt.Println("agent: done, exit 0")
}
