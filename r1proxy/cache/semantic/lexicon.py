"""Word lists the semantic guards read: contrast sets, negations, units, number words, named tech.

Pure data. A contrast set is a family of words whose members change what is asked for
("enable" vs "disable", "ascending" vs "descending", "tabs" vs "spaces"); words of one value
in a set are synonyms of the same polarity ("remove" = "delete"), so swapping them is no flip.
Multi-word phrases ("turn on") are matched before single words.
"""

from __future__ import annotations

# contrast set -> value -> words (lower case; phrases with a single space)
CONTRASTS: dict[str, dict[str, tuple[str, ...]]] = {
    "enable": {
        "+": ("enable", "enables", "enabled", "enabling", "activate", "activates", "activated", "turn on",
              "turns on", "switch on", "toggle on", "on"),
        "-": ("disable", "disables", "disabled", "disabling", "deactivate", "deactivates", "deactivated",
              "turn off", "turns off", "switch off", "toggle off", "off"),
    },
    "add": {
        "+": ("add", "adds", "added", "adding", "insert", "inserts", "inserting", "create", "creates", "creating",
              "introduce", "introduces", "put in", "new"),
        "-": ("remove", "removes", "removed", "removing", "delete", "deletes", "deleted", "deleting", "drop",
              "drops", "strip", "strips", "eliminate", "erase", "get rid of", "take out", "rip out", "omit"),
    },
    "crud": {"+": ("create", "creates", "created", "creating", "creation"),
             "update": ("update", "updates", "updated", "updating", "modify", "modifies", "modified", "edit",
                        "edits", "edited", "editing")},
    "load": {"+": ("eager", "eagerly", "preload", "prefetch"), "-": ("lazy", "lazily", "lazy-load", "defer")},
    "parallel": {"+": ("parallel", "concurrently", "concurrent", "in parallel"),
                 "-": ("sequential", "sequentially", "serially", "one by one", "one at a time")},
    "include": {"+": ("include", "includes", "including", "inclusive"),
                "-": ("exclude", "excludes", "excluding", "exclusive")},
    "amount": {
        "+": ("increase", "increases", "increasing", "raise", "raises", "bump", "grow", "extend", "expand",
              "enlarge", "double", "more", "higher", "larger", "bigger", "longer", "greater", "above",
              "scale up", "rise", "rises"),
        "-": ("decrease", "decreases", "decreasing", "reduce", "reduces", "lower", "lowers", "shrink",
              "cut", "halve", "less", "fewer", "smaller", "shorter", "below", "beneath", "scale down",
              "drops below"),
    },
    "extreme": {
        "+": ("max", "maximum", "maximal", "maximize", "maximise", "largest", "biggest", "highest", "longest",
              "most", "greatest", "newest", "latest", "up to", "at most", "no more than"),
        "-": ("min", "minimum", "minimal", "minimize", "minimise", "smallest", "lowest", "shortest", "least",
              "oldest", "earliest", "at least", "no less than", "no fewer than"),
    },
    "updown": {"+": ("up", "upward", "upwards", "upper", "scrolling up", "scroll up"),
               "-": ("down", "downward", "downwards", "scrolling down", "scroll down")},
    "inout": {"+": ("incoming", "inbound", "ingress", "input"),
              "-": ("out of", "outside", "out", "outgoing", "outbound", "egress", "output")},
    "stdio": {"in": ("stdin",), "out": ("stdout",), "err": ("stderr",)},
    "age": {"+": ("older", "stale"), "-": ("newer", "younger", "recent", "fresh")},
    "order": {"+": ("ascending", "asc", "increasing order", "a-z"),
              "-": ("descending", "desc", "decreasing order", "reverse order", "reversed", "z-a")},
    "time": {"+": ("before", "earlier", "prior", "previous", "pre", "preceding", "prepend"),
             "-": ("after", "later", "following", "next", "post", "append", "afterwards")},
    "position": {"+": ("first", "top", "beginning", "head", "start of", "front", "leading"),
                 "-": ("last", "bottom", "end", "tail", "end of", "back", "trailing")},
    "side": {"+": ("left",), "-": ("right",)},
    "axis": {"+": ("horizontal", "horizontally", "width", "row", "rows", "x-axis"),
             "-": ("vertical", "vertically", "height", "column", "columns", "y-axis")},
    "show": {"+": ("show", "shows", "display", "displays", "reveal", "unhide", "visible", "expand"),
             "-": ("hide", "hides", "hidden", "conceal", "invisible", "collapse", "collapsed")},
    "open": {"+": ("open", "opens", "opening"), "-": ("close", "closes", "closing", "closed")},
    "run": {"+": ("start", "starts", "starting", "launch", "resume", "begin", "restart"),
            "-": ("stop", "stops", "stopping", "halt", "kill", "terminate", "pause", "shut down", "shutdown")},
    "allow": {"+": ("allow", "allows", "allowed", "permit", "permits", "accept", "accepts", "whitelist",
                    "allowlist", "grant", "approve"),
              "-": ("deny", "denies", "denied", "block", "blocks", "blocked", "reject", "rejects", "forbid",
                    "disallow", "blacklist", "blocklist", "refuse", "revoke", "ban")},
    "truth": {"+": ("true", "yes"), "-": ("false",)},
    "valid": {"+": ("valid", "success", "successful", "successfully", "succeed", "succeeds", "succeeded", "pass",
                    "passes", "passing", "passed", "ok"),
              "-": ("invalid", "failure", "fail", "fails", "failing", "failed", "error", "errors", "broken")},
    "lock": {"+": ("lock", "locks", "locked"), "-": ("unlock", "unlocks", "unlocked")},
    "crypt": {"+": ("encrypt", "encrypts", "encryption", "encrypted"),
              "-": ("decrypt", "decrypts", "decryption", "decrypted")},
    "code": {"+": ("encode", "encodes", "encoding", "encoder", "serialize", "serialise", "serialization",
                   "marshal", "stringify", "dump", "dumps", "format", "formats", "formatting"),
             "-": ("decode", "decodes", "decoding", "decoder", "deserialize", "deserialise", "deserialization",
                   "unmarshal", "parse", "parses", "parsing", "load", "loads")},
    "pack": {"+": ("compress", "compresses", "compression", "zip", "pack", "archive"),
             "-": ("decompress", "decompresses", "decompression", "unzip", "unpack", "extract")},
    "transfer": {"+": ("import", "imports", "importing", "upload", "uploads", "uploading", "push", "send", "sends"),
                 "-": ("export", "exports", "exporting", "download", "downloads", "downloading", "pull", "receive",
                       "receives")},
    "io": {"+": ("write", "writes", "writing", "save", "saves", "saving", "store", "stores", "storing", "set",
                 "setter"),
           "-": ("read", "reads", "reading", "fetch", "fetches", "get", "gets", "getter", "retrieve")},
    "install": {"+": ("install", "installs", "installed", "installing"),
                "-": ("uninstall", "uninstalls", "uninstalled", "uninstalling")},
    "connect": {"+": ("connect", "connects", "connected", "mount", "subscribe", "login", "log in", "sign in",
                      "attach", "register"),
                "-": ("disconnect", "disconnects", "disconnected", "unmount", "unsubscribe", "logout",
                      "log out", "sign out", "detach", "unregister")},
    "scope": {"+": ("public", "global", "globally", "remote", "external"),
              "-": ("private", "local", "locally", "internal")},
    "sync": {"+": ("sync", "synchronous", "synchronously", "blocking"),
             "-": ("async", "asynchronous", "asynchronously", "non-blocking", "nonblocking")},
    "theme": {"+": ("light",), "-": ("dark",)},
    "case": {"+": ("uppercase", "upper case", "upper-case", "capital", "capitals", "capitalize", "capitalise"),
             "-": ("lowercase", "lower case", "lower-case")},
    "version": {"+": ("upgrade", "upgrades", "update to newer"), "-": ("downgrade", "downgrades", "rollback",
                                                                         "roll back", "revert")},
    "path": {"+": ("absolute",), "-": ("relative",)},
    "need": {"+": ("required", "require", "requires", "mandatory", "must"),
             "-": ("optional", "optionally")},
    "mutable": {"+": ("mutable", "writable", "read write", "write mode"),
                "-": ("immutable", "readonly", "read only", "frozen", "const")},
    "direction": {"+": ("forward", "forwards", "redo", "next page"), "-": ("backward", "backwards", "undo")},
    "merge": {"+": ("merge", "merges", "join", "joins", "combine", "concatenate", "squash"),
              "-": ("split", "splits", "separate", "divide")},
    "whitespace": {"+": ("tab", "tabs"), "-": ("space", "spaces")},
    "quote": {"+": ("single quote", "single quotes", "single-quoted"),
              "-": ("double quote", "double quotes", "double-quoted")},
    "http": {"get": ("get request", "http get"), "post": ("post request", "http post"),
             "put": ("put request", "http put"), "patch": ("patch request", "http patch"),
             "delete": ("delete request", "http delete")},
    "env": {"+": ("production", "prod"), "-": ("development", "dev", "staging", "test environment")},
    "role": {"+": ("client", "frontend", "front-end", "sender", "caller", "parent"),
             "-": ("server", "backend", "back-end", "receiver", "callee", "child")},
    "sensitivity": {"+": ("case-sensitive", "case sensitive", "sensitive"),
                    "-": ("case-insensitive", "case insensitive", "insensitive", "ignore case", "ignoring case")},
    "recursion": {"+": ("recursive", "recursively", "recursion"), "-": ("iterative", "iteratively", "loop")},
    "strict": {"+": ("strict", "strictly"), "-": ("lenient", "loose", "loosely", "relaxed")},
    "width": {"+": ("wide", "wider", "widen"), "-": ("narrow", "narrower")},
    "speed": {"+": ("fast", "faster", "fastest", "quick", "quicker", "quickly", "speed up"),
              "-": ("slow", "slower", "slowest", "slowly", "slow down")},
}

# Verb-like sets whose "+" value is the plain request ("add", "enable", "write"): a rewording may
# leave that verb out ("Paginate X" = "Add pagination to X"), so "+" on one side only is no flip.
# Every other difference is: "-" on one side only ("disable X" vs "X"), or different values.
VERB_SETS = frozenset({"enable", "add", "amount", "show", "open", "run", "allow", "io", "install", "connect",
                       "version", "code", "pack", "crypt", "lock", "include", "crud"})

# Words that negate, restrict or replace, by class: each class must occur as often on both sides
# ("only admins" is not "everyone except admins", though both hold one such word).
_NEGATION_CLASSES = {
    "not": ("not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "cannot", "nowhere", "non",
            "nonzero", "lack", "lacks", "missing"),
    "without": ("without",),
    "avoid": ("avoid", "avoids", "prevent", "prevents", "skip", "skips", "skipping", "ignore", "ignores", "ignoring",
              "stop", "disallowing"),
    "except": ("except", "unless", "but not", "other than", "apart from"),
    "only": ("only", "solely", "exclusively", "just the"),
    "instead": ("instead", "rather"),
    "own": ("own",),
    "unique": ("unique", "distinct", "duplicate", "duplicates"),
    "also": ("also", "as well", "too", "additionally", "both"),
    "either": ("either", "or"),
}
NEGATIONS: dict[str, str] = {w: c for c, ws in _NEGATION_CLASSES.items() for w in ws}

# prefixes that negate a word ("used" / "unused", "empty" / "non-empty")
NEGATING_PREFIXES = ("un", "non-", "non", "in", "im", "il", "ir", "dis", "de", "anti-", "anti")

UNITS: dict[str, str] = {}
for _canon, _words in {
    "ms": ("ms", "msec", "millisecond", "milliseconds"), "us": ("us", "µs", "microsecond", "microseconds"),
    "ns": ("ns", "nanosecond", "nanoseconds"), "s": ("s", "sec", "secs", "second", "seconds"),
    "min": ("min", "mins", "minute", "minutes"), "h": ("h", "hr", "hrs", "hour", "hours"),
    "d": ("d", "day", "days"), "week": ("week", "weeks"), "month": ("month", "months"), "year": ("year", "years"),
    "B": ("b", "byte", "bytes"), "KB": ("kb", "kib", "kilobyte", "kilobytes", "k"),
    "MB": ("mb", "mib", "megabyte", "megabytes"), "GB": ("gb", "gib", "gigabyte", "gigabytes"),
    "TB": ("tb", "tib", "terabyte", "terabytes"), "bit": ("bit", "bits"), "px": ("px", "pixel", "pixels"),
    "pt": ("pt",), "em": ("em",), "rem": ("rem",), "%": ("%", "percent", "pct"),
    "kg": ("kg", "kilogram", "kilograms"), "g": ("g", "gram", "grams"), "km": ("km", "kilometer", "kilometers",
                                                                           "kilometre", "kilometres"),
    "m": ("m", "meter", "meters", "metre", "metres"), "cm": ("cm",), "mm": ("mm",), "mile": ("mile", "miles"),
    "C": ("°c", "celsius", "centigrade"), "F": ("°f", "fahrenheit"), "K": ("kelvin",),
    "USD": ("usd", "$", "dollar", "dollars"), "EUR": ("eur", "€", "euro", "euros"), "GBP": ("gbp", "£", "pound",
                                                                                         "pounds"),
    "line": ("line", "lines", "loc"), "char": ("char", "chars", "character", "characters"),
    "token": ("token", "tokens"), "row": ("row", "rows"), "col": ("col", "cols"), "item": ("item", "items"),
    "retry": ("retry", "retries", "attempt", "attempts"), "thread": ("thread", "threads"),
    "worker": ("worker", "workers"), "core": ("core", "cores"), "rpm": ("rpm",), "rps": ("rps", "qps"),
    "x": ("x", "times"), "fps": ("fps",), "hz": ("hz", "khz", "mhz", "ghz"), "dpi": ("dpi",),
}.items():
    for _w in _words:
        UNITS[_w] = _canon
# unit words that stand alone ("timeout in seconds") are hard tokens too; these only after a number
UNITS_AFTER_NUMBER_ONLY = frozenset({"s", "m", "h", "d", "b", "k", "g", "x", "us", "pt", "em", "line", "lines",
                                     "row", "rows", "item", "items", "token", "tokens", "char", "chars",
                                     "character", "characters", "thread", "threads", "worker", "workers", "core",
                                     "cores", "retry", "retries", "attempt", "attempts", "times", "second",
                                     "col", "cols", "rem"})

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen twenty")
NUMBER_WORDS: dict[str, str] = {w: str(i) for i, w in enumerate(_ONES.split())}
NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
                     "ninety": "90", "hundred": "100", "thousand": "1000", "million": "1000000",
                     "billion": "1000000000", "twice": "2", "thrice": "3", "dozen": "12"})
ORDINALS: dict[str, str] = {w: str(i + 1) for i, w in enumerate(
    ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"])}

# named things whose swap changes the answer: languages, runtimes, formats, stores, tools, human languages
NAMED = {
    "python": "python", "python3": "python3", "python2": "python2", "javascript": "javascript", "js": "javascript",
    "typescript": "typescript", "ts": "typescript", "java": "java", "kotlin": "kotlin", "scala": "scala",
    "rust": "rust", "golang": "go", "c++": "c++", "cpp": "c++", "c#": "c#", "csharp": "c#",
    "ruby": "ruby", "php": "php", "perl": "perl", "swift": "swift", "haskell": "haskell", "elixir": "elixir",
    "erlang": "erlang", "clojure": "clojure", "lua": "lua", "julia": "julia", "dart": "dart",
    "zig": "zig", "nim": "nim", "ocaml": "ocaml", "fortran": "fortran", "cobol": "cobol", "bash": "bash",
    "sh": "sh", "zsh": "zsh", "fish": "fish", "powershell": "powershell", "sql": "sql", "html": "html",
    "css": "css", "scss": "scss", "sass": "sass", "wasm": "wasm", "webassembly": "wasm",
    "react": "react", "vue": "vue", "angular": "angular", "svelte": "svelte", "django": "django",
    "flask": "flask", "fastapi": "fastapi", "aiohttp": "aiohttp", "rails": "rails",
    "spring": "spring", "laravel": "laravel", "node": "node", "nodejs": "node", "deno": "deno", "bun": "bun",
    "numpy": "numpy", "pandas": "pandas", "pytorch": "pytorch", "torch": "pytorch", "tensorflow": "tensorflow",
    "postgres": "postgres", "postgresql": "postgres", "mysql": "mysql", "mariadb": "mariadb",
    "sqlite": "sqlite", "redis": "redis", "mongodb": "mongodb", "mongo": "mongodb", "elasticsearch": "elastic",
    "kafka": "kafka", "rabbitmq": "rabbitmq", "json": "json", "yaml": "yaml", "yml": "yaml", "toml": "toml",
    "xml": "xml", "csv": "csv", "tsv": "tsv", "ini": "ini", "markdown": "markdown", "protobuf": "protobuf",
    "parquet": "parquet", "msgpack": "msgpack", "pdf": "pdf", "png": "png", "jpeg": "jpeg", "jpg": "jpeg",
    "gif": "gif", "svg": "svg", "webp": "webp", "utf-8": "utf-8", "utf8": "utf-8", "ascii": "ascii",
    "latin-1": "latin-1", "base64": "base64", "hex": "hex", "md5": "md5", "sha1": "sha1", "sha256": "sha256",
    "sha-256": "sha256", "bcrypt": "bcrypt", "argon2": "argon2", "jwt": "jwt", "oauth": "oauth",
    "http": "http", "https": "https", "http/2": "http2", "http2": "http2", "grpc": "grpc", "graphql": "graphql",
    "websocket": "websocket", "websockets": "websocket", "sse": "sse", "tcp": "tcp",
    "udp": "udp", "ipv4": "ipv4", "ipv6": "ipv6", "ssh": "ssh", "ftp": "ftp", "smtp": "smtp", "dns": "dns",
    "docker": "docker", "podman": "podman", "kubernetes": "kubernetes", "k8s": "kubernetes", "helm": "helm",
    "terraform": "terraform", "ansible": "ansible", "systemd": "systemd", "nginx": "nginx", "apache": "apache",
    "caddy": "caddy", "git": "git", "github": "github", "gitlab": "gitlab", "jenkins": "jenkins",
    "linux": "linux", "windows": "windows", "macos": "macos", "mac": "macos", "ios": "ios", "android": "android",
    "debian": "debian", "ubuntu": "ubuntu", "alpine": "alpine", "arm": "arm", "arm64": "arm64",
    "x86": "x86", "x86_64": "x86_64", "amd64": "x86_64", "aws": "aws", "gcp": "gcp", "azure": "azure",
    "pytest": "pytest", "unittest": "unittest", "jest": "jest", "mocha": "mocha", "vitest": "vitest",
    "webpack": "webpack", "vite": "vite", "npm": "npm", "yarn": "yarn", "pnpm": "pnpm", "pip": "pip",
    "poetry": "poetry", "uv": "uv", "cargo": "cargo", "maven": "maven", "gradle": "gradle",
    "cmake": "cmake", "mypy": "mypy", "ruff": "ruff", "eslint": "eslint",
    "prettier": "prettier", "tailwind": "tailwind", "bootstrap": "bootstrap", "jquery": "jquery",
    "english": "english", "french": "french", "german": "german", "spanish": "spanish", "italian": "italian",
    "portuguese": "portuguese", "chinese": "chinese", "japanese": "japanese", "korean": "korean",
    "russian": "russian", "arabic": "arabic", "hindi": "hindi", "dutch": "dutch", "polish": "polish",
    "openai": "openai", "openrouter": "openrouter", "anthropic": "anthropic", "deepseek": "deepseek",
    "gpt": "gpt", "claude": "claude", "llama": "llama", "ollama": "ollama", "vscode": "vscode",
    "vim": "vim", "emacs": "emacs", "chrome": "chrome", "firefox": "firefox", "safari": "safari",
    "mock": "mock", "stub": "stub", "integration": "integration", "unit": "unit", "e2e": "e2e",
    "monday": "monday", "tuesday": "tuesday", "wednesday": "wednesday", "thursday": "thursday",
    "friday": "friday", "saturday": "saturday", "sunday": "sunday", "utc": "utc", "gmt": "utc",
    "snake_case": "snake_case", "camelcase": "camelcase", "pascalcase": "pascalcase",
    "kebab-case": "kebab-case", "lru": "lru", "lfu": "lfu", "fifo": "fifo", "lifo": "lifo", "bfs": "bfs",
    "dfs": "dfs", "regex": "regex", "glob": "glob", "crlf": "crlf", "lf": "lf",
}
