// The results pages' charts and live refresh. Chart specifications come from the server as
// JSON blocks (<script type="application/json" id=...>) next to each <canvas data-chart=...>;
// Chart.js (static/vendor/, MIT licence) draws them. No inline script: the pages' CSP forbids it.
(function () {
  "use strict";
  var palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
                 "#17becf", "#bcbd22", "#7f7f7f", "#d62728"];

  function utc(ms) {
    return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
  }

  function colours(spec) {
    var byName = {}, next = 0;
    spec.datasets.forEach(function (d) {
      var base = d.label.replace(/ ideal$/, "");
      if (!(base in byName)) byName[base] = palette[next++ % palette.length];
      var colour = d.color || byName[base];
      d.borderColor = colour;
      d.backgroundColor = spec.type === "bar" ? colour + "cc" : colour;
      if (d.dashed) d.borderDash = [6, 4];
      delete d.dashed;
      delete d.color;
    });
  }

  function axes(spec) {
    var x = { title: { display: true, text: spec.xLabel } };
    if (spec.type === "bar") {
      x.type = "category";
    } else {
      x.type = "linear";
      if (spec.xTime) x.ticks = { callback: function (v) { return utc(v).slice(0, 10); } };
      if (spec.xStep) x.ticks = { stepSize: spec.xStep, precision: 0 };
    }
    return { x: x, y: { title: { display: true, text: spec.yLabel }, beginAtZero: spec.type === "bar" } };
  }

  function draw(canvas) {
    var block = document.getElementById(canvas.getAttribute("data-chart"));
    var spec = JSON.parse(block.textContent);
    colours(spec);
    var options = {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: "nearest", intersect: false },
      scales: axes(spec),
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } }
    };
    if (spec.xTime) {
      options.plugins.tooltip = { callbacks: {
        title: function (items) {
          return items.length ? utc(items[0].parsed.x) + " UTC" : "";
        },
        // a change point's marker carries what moved and what changed there
        afterLabel: function (item) { return item.raw && item.raw.note ? item.raw.note : ""; }
      } };
    }
    var data = { datasets: spec.datasets };
    if (spec.labels) data.labels = spec.labels;
    return new window.Chart(canvas, { type: spec.type, data: data, options: options });
  }

  function live(box) {
    var every = parseInt(box.getAttribute("data-refresh-ms"), 10) || 5000;
    var url = box.getAttribute("data-refresh-url");
    window.setInterval(function () {
      fetch(url, { credentials: "same-origin", cache: "no-store" })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) { if (html !== null) box.innerHTML = html; })
        .catch(function () { /* the server is restarting: try again next time */ });
    }, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    window.orchestratorCharts = [];
    document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      window.orchestratorCharts.push(draw(canvas));
    });
    document.querySelectorAll("[data-refresh-url]").forEach(live);
  });
})();
