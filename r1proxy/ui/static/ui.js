/* r1proxy dashboard: charts (vendored uPlot), live refresh of the overview, clickable table rows.
   Loaded as a file: the Content-Security-Policy allows no inline script. Values are written with
   textContent only, never as HTML. */
(function () {
  "use strict";
  var main = document.querySelector("main[data-page]");
  if (!main) { return; }

  var fmt = {
    int: function (v) { return Math.round(v || 0).toLocaleString("en-US"); },
    usd: function (v) {
      return "$" + (v || 0).toLocaleString("en-US", { minimumFractionDigits: 4, maximumFractionDigits: 4 });
    },
    pct: function (v) { return ((v || 0) * 100).toFixed(1) + "%"; },
    bytes: function (v) {
      var n = v || 0, units = ["B", "KB", "MB", "GB"];
      for (var i = 0; i < units.length; i++) {
        if (n < 1024 || i === units.length - 1) { return i === 0 ? n.toFixed(0) + " B" : n.toFixed(1) + " " + units[i]; }
        n /= 1024;
      }
      return "";
    },
    dur: function (v) { return Math.floor(v || 0) + " s"; },
    time: function (v) { return new Date(v * 1000).toISOString().slice(0, 19).replace("T", " "); }
  };

  // Which series each kind of chart draws: [field, colour, label, bars?]
  var KINDS = {
    requests: [["requests", "#4a5568", "requests"], ["hits", "#2f855a", "served from cache"],
               ["misses", "#c05621", "misses"], ["errors", "#c53030", "errors + 429"]],
    money: [["cost", "#c53030", "$ spent", true], ["saved", "#2f855a", "$ saved (local cache)", true],
            ["prefix_saved", "#3182ce", "$ saved (upstream prefix cache)", true]],
    latency: [["ttfb_p50", "#2b6cb0", "TTFB p50 ms"], ["ttfb_p95", "#90cdf4", "TTFB p95 ms"],
              ["total_p50", "#6b46c1", "total p50 ms"], ["total_p95", "#d6bcfa", "total p95 ms"]]
  };
  var charts = {};
  // y-axis labels: dollars keep their small digits (a day of R1 calls is often cents)
  var AXIS = {
    money: function (v) { return "$" + (v === 0 ? "0" : String(+v.toPrecision(3))); },
    latency: function (v) { return v + " ms"; }
  };

  function lookup(obj, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? undefined : o[k]; }, obj);
  }

  function draw(el, s) {
    var spec = KINDS[el.dataset.kind];
    if (!spec || !s || !window.uPlot) { return; }
    var data = [s.t].concat(spec.map(function (x) { return s[x[0]]; }));
    var chart = charts[el.id];
    if (chart) {
      chart.setData(data);
    } else {
      var bars = window.uPlot.paths && window.uPlot.paths.bars ? window.uPlot.paths.bars({ size: [0.4, 40] }) : null;
      var opts = {
        width: Math.max(320, el.clientWidth || 800), height: 220,
        scales: { x: { time: true } },
        series: [{}].concat(spec.map(function (x) {
          var o = { label: x[2], stroke: x[1], width: 2 };
          if (x[3] && bars) { o.paths = bars; o.fill = x[1] + "99"; }
          return o;
        })),
        axes: [{}, { size: 70, values: function (u, vals) { return vals.map(AXIS[el.dataset.kind] || String); } }]
      };
      chart = charts[el.id] = new window.uPlot(opts, data, el);
    }
    el.dataset.points = String(s.t.length);
    el.dataset.total = String(data[1].reduce(function (a, b) { return a + (b || 0); }, 0));
  }

  function fill(d) {
    document.querySelectorAll("[data-field]").forEach(function (el) {
      var v = lookup(d, el.dataset.field), f = fmt[el.dataset.fmt];
      if (v !== undefined && f) { el.textContent = f(v); }
    });
    var tbody = document.querySelector("table.outcomes tbody");
    if (tbody && d.today && d.month) {
      var names = Object.keys(d.month.by_outcome);
      Object.keys(d.today.by_outcome).forEach(function (n) { if (names.indexOf(n) < 0) { names.push(n); } });
      if (names.length) {
        tbody.replaceChildren.apply(tbody, names.map(function (n) {
          var tr = document.createElement("tr");
          [n, fmt.int(d.today.by_outcome[n]), fmt.pct(d.today.rate_by_outcome[n]),
           fmt.int(d.month.by_outcome[n]), fmt.pct(d.month.rate_by_outcome[n])].forEach(function (text) {
            var td = document.createElement("td");
            td.textContent = text;
            tr.appendChild(td);
          });
          return tr;
        }));
      }
    }
    document.querySelectorAll(".chart[data-series]").forEach(function (el) {
      draw(el, el.dataset.series === "latency" ? d : d[el.dataset.series]);
    });
  }

  var updates = 0;
  function refresh() {
    return fetch(main.dataset.api, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (d) { fill(d); main.dataset.updates = String(++updates); }
      })
      .catch(function () { main.dataset.stale = "1"; });
  }

  if (main.dataset.api) {
    refresh();
    var every = parseInt(main.dataset.pollMs || "0", 10);
    if (every > 0) { window.setInterval(refresh, every); }
  }

  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (id) {
      var el = document.getElementById(id);
      charts[id].setSize({ width: Math.max(320, el.clientWidth), height: 220 });
    });
  });

  document.querySelectorAll("tr[data-href]").forEach(function (tr) {
    tr.addEventListener("click", function (e) {
      if (e.target.closest("a, button, form, input, select")) { return; }
      window.location.href = tr.dataset.href;
    });
  });
}());
