"""agentcred benchmark: agentcred, the floor for its design and External Secrets, side by side.

    python -m bench                 # the full run (`make bench`), about an hour on 2 cores
    python -m bench --quick         # `make bench-quick`: every stage kind briefly (CI runs it)
    python -m bench --only agentcred,floor --bursts 1000,5000 --profile   # single stages
    python -m bench.report [results.json] [--publish]   # tables and plots again, no cluster

Starts etcd + kube-apiserver + kube-controller-manager on loopback, then runs the stages of
`bench/__main__.py`'s list, one module each under bench/stages/; each stage's figures are
written to bench/out/results.json as soon as it finishes, a failed stage is recorded with its
error and the run goes on; namespaces are deleted (and waited for) between stages so no stage
pays for an earlier one's objects.

  eso-build        ESO's binary from the cache, or built (quick: the build path rehearsed)
  webhook          admission latency per AdmissionReview (straight to the operator's webhook)
  floor-N          a plain client doing, per pod, the API writes agentcred causes (no operator)
  agentcred-N      N pods created at once -> value written and pod ungated; revocation; CPU
                   (a freshly started operator per burst; its start-up time is recorded)
  baseline-V-N     the same with other checkouts' operators (--baseline V=DIR): before and after
  busy-floor-N,    the floor and agentcred again with --background-load cores kept busy
  busy-agentcred-N
  tokens           the token service at 100 concurrent clients: token exchange and JWT
                   bearer grants by pods' bound ServiceAccount tokens, throughput, p50/p99
  trace-index      one trace lookup against 10,000 live values, in process
  leaks            leak report -> revoked, -> fresh value written, at 1,000 live projections
  gateway          ext_authz and forward-auth decisions at 1/16/100 callers; a tool call
                   through Caddy beside Caddy with no authorization (the floor)
  dpop             token exchange with and without a DPoP proof at 1/100 callers (bearer the
                   floor); verification cost per call, in process
  csi              on a real node of its own: pod created -> readable for Secret (the floor)
                   and CSI delivery, renewal -> readable, revoke -> gone, the plugin's memory
  eso-V-N          N ExternalSecrets (Fake store + Password generator) -> target Secret
                   written; deleted -> Secret gone; ESO's RSS and CPU (V: client limits)
  eso-refresh      M ExternalSecrets refreshing every 80 s: lateness, RSS, CPU
  scale            live projections ramped to 20,000 over 500 AgentCredentials: RSS and CPU
                   at each step, renewal of 10,000 values on 2-minute TTLs, operator
                   start-up (ready, every index listed) with 1,000 / 10,000 live
  kubelet-delay    (when asked) a renewal -> readable in the container, on a real node
  attacks          (when asked) the operator's memory under issue 21's floods

Timing is taken on this side of the API (call returned -> watch event read) with the same
client (16 threads, one HTTP pool) for agentcred, the floor and ESO, so it includes the API
server's and the watch's latency, as a user would see it. Plots go to bench/out/*.png;
--publish copies them to bench/plots/ and rewrites the generated part of bench/RESULTS.md.
"""
