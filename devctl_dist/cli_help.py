"""Help and epilog texts of the ``devctl`` commands defined in ``devctl_dist.cli``.

Kept apart so the command module stays about behaviour; ``worker``/``flower`` keep
theirs in ``devctl_dist.service_commands``.
"""

HELP = {
    "var": "Set a template variable (repeatable); overrides the file's vars. Typed like YAML: "
    "n=10 is the integer 10, flag=true a boolean, v=\"'10'\" the string 10; 1.10 and 007 stay strings.",
    "validate-var": "A variable the run will get with --var (repeatable): its name counts as defined.",
    "dry-run": "Print the planned waves under the concurrency cap; run nothing.",
    "output": "table: live table (plain lines when stdout is not a terminal); plain: timestamped lines; "
    "json: one JSON result document on stdout.",
    "results-file": "Also write the JSON result here (partial results on interrupt).",
    "max-concurrent": "Cap on steps running at once across the run (overrides parallel.max_concurrent).",
    "rate-limit": "At most R step starts per second (overrides parallel.rate_limit).",
    "distributed": "Run the steps on Celery workers (start them with devctl worker).",
    "resume": "Continue run RUN_ID (see devctl runs list; 'last': this file's latest run) after a failure, "
    "Ctrl-C or a dead coordinator: succeeded steps are reused with their outputs, the others run again "
    "(with --distributed, steps still running on workers are adopted).",
    "force": "With --resume: resume even if the workflow's steps changed since that run "
    "(changed steps run again).",
    "quiet": "Show step states only, not the steps' output lines.",
    "debug": "Show tracebacks and debug logs on errors.",
    "graph-format": "text, mermaid (graph TD) or dot (Graphviz digraph).",
}

EPILOG_MAIN = """\b
Examples:
  devctl run deploy.yaml --var env=prod        run with a live table
  devctl run deploy.yaml --dry-run             show the planned waves, run nothing
  devctl run deploy.yaml --output json         one JSON document on stdout
  devctl validate workflows/*.yaml             check files (exit 2 if any is invalid)
  devctl graph deploy.yaml --format mermaid    draw the workflow
  devctl worker --queues default,gpu           serve steps for --distributed runs
\b
Exit codes: 0 success, 1 a step failed, 2 invalid workflow or usage, 3 infrastructure
unavailable (broker unreachable, no worker answered, Redis lost mid-run: retry), 130 SIGINT
(Ctrl-C), 143 SIGTERM.
"""

RUN_HELP = """Run a workflow file.

Plain steps run one after another; a `parallel:` block runs its steps concurrently; any
`depends_on` turns the file into a dependency graph where each step starts as soon as its
dependencies succeeded. On a terminal a live table shows progress; piped, one timestamped
line per event.
"""

EPILOG_RUN = """\b
Examples:
  devctl run deploy.yaml
  devctl run deploy.yaml --var env=prod --var version=1.4.2
  devctl run deploy.yaml --dry-run --max-concurrent 4
  devctl run deploy.yaml --output json > result.json
  devctl run deploy.yaml --results-file result.json --rate-limit 5
  devctl run deploy.yaml --distributed --broker redis://redis:6379/0
\b
Exit codes: 0 success, 1 a step failed, 2 invalid workflow or usage, 3 infrastructure
unavailable (broker unreachable, no worker answered, Redis lost mid-run: retry), 130 SIGINT
(Ctrl-C), 143 SIGTERM.
"""

EPILOG_VALIDATE = """\b
Examples:
  devctl validate deploy.yaml
  devctl validate workflows/*.yaml 'more/**/*.yaml'     quoted globs are expanded too
  devctl validate deploy.yaml --var version=1.4.2       {{ version }} counts as defined
\b
One line per file: "OK: FILE: N steps (mode)" on stdout, or "devctl: error: FILE:LINE: ..."
on stderr; warnings (unknown devctl commands) follow the OK line. Exit 2 if any file is
invalid. Besides the schema and the graph it catches what a run would fail on: undefined
template variables, template syntax errors, and results['x'] naming no step or, in a
dependency graph, a step that is not an ancestor.
"""

EPILOG_GRAPH = """\b
Examples:
  devctl graph deploy.yaml                       layers and arrows in the terminal
  devctl graph deploy.yaml --format mermaid      paste into a Markdown ```mermaid block
  devctl graph deploy.yaml --format dot | dot -Tsvg > deploy.svg
"""
