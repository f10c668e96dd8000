// emotion-monitor dashboard: connects to ws(s)://<this host>/ws and draws what arrives.
// Plain JavaScript, no libraries, no build step. The wire format is documented in
// docs/protocol.md (client/messages.py is the reference). Element ids are stable so a
// browser test can read the page: #connection-state, #stream-select, #current-label,
// #current-confidence, #speech-state, #chart (data-points), #stats, #stream-list.
(function () {
  "use strict";

  var PROTOCOL_VERSION = 1;
  var CHART_SPAN_S = 180;          // seconds of stream time shown in the chart, at most
  var MIN_SPAN_S = 30;             // the axis starts this wide and grows with the data
  var MAX_POINTS = 4000;           // per stream, a hard cap whatever the hop
  var BACKOFF_INITIAL_MS = 500;
  var BACKOFF_MAX_MS = 10000;
  var UNCERTAIN = "uncertain";

  // One colour per label, the same hues as the terminal view (client/watch.py).
  var LABEL_COLOURS = {
    angry: "#c62828", happy: "#b7791f", neutral: "#00838f", sad: "#1565c0",
    fear: "#6a1b9a", surprise: "#2e7d32", disgust: "#8d6e00", calm: "#00695c",
  };
  var PALETTE = ["#2e7d32", "#6a1b9a", "#d84315", "#283593", "#ad1457", "#00695c"];
  var GREY = "#757575";

  var $ = function (id) { return document.getElementById(id); };
  var el = {
    conn: $("connection-state"), select: $("stream-select"), name: $("stream-name"),
    label: $("current-label"), confidence: $("current-confidence"), speech: $("speech-state"),
    streamState: $("stream-state"), lastUpdate: $("last-update"), windowInfo: $("window-info"),
    bars: $("probabilities"), chart: $("chart"), legend: $("legend"), span: $("chart-span"),
    list: $("stream-list"), stats: $("stats"), server: $("server-info"),
  };

  var state = {
    hello: null,        // the latest hello
    labels: [],
    streams: new Map(), // name -> stream record
    selected: null,
    stats: null,
  };
  var initialStream = new URLSearchParams(location.search).get("stream");

  function colour(label) {
    if (label === UNCERTAIN) return GREY;
    var known = LABEL_COLOURS[String(label).toLowerCase()];
    if (known) return known;
    var i = state.labels.indexOf(label);
    if (i < 0) { i = 0; for (var k = 0; k < label.length; k++) i += label.charCodeAt(k); }
    return PALETTE[i % PALETTE.length];
  }

  function streamRecord(name) {
    var s = state.streams.get(name);
    if (!s) {
      s = { name: name, open: true, speaking: false, last: null, lastSeq: -1,
            updatedWall: null, openedWall: null, history: [] };
      state.streams.set(name, s);
    }
    return s;
  }

  // ---- messages ---------------------------------------------------------------------------

  function onHello(m) {
    var newRun = !state.hello || state.hello.session !== m.session;
    state.hello = m;
    state.labels = m.labels.slice();
    if (newRun) {
      // a different server run: its sequence numbers and stream times start over
      state.streams.clear();
      state.stats = null;
    }
    m.streams.forEach(function (info) { streamRecord(info.stream).open = true; });
    el.server.textContent = "model " + m.model + " · window " + m.window_s + " s, hop " +
      m.hop_s + " s · session " + m.session;
    el.span.textContent = String(CHART_SPAN_S);
  }

  function onOpen(m) {
    var s = streamRecord(m.stream);
    if (s.openedWall !== null && s.openedWall !== m.wall_time) {
      // the name was reused in this run: a new stream whose sequence numbers start over
      s.history = []; s.last = null; s.lastSeq = -1; s.updatedWall = null;
    }
    s.openedWall = m.wall_time; // a stream_open replayed after a reconnect has the same time
    s.open = true;
  }

  function onWindow(m) {
    var s = streamRecord(m.stream);
    if (m.seq <= s.lastSeq) return; // a backlog resent after a reconnect
    s.lastSeq = m.seq;
    s.last = m;
    s.updatedWall = m.wall_time;
    s.history.push({ start: m.start_s, end: m.end_s, p: m.probabilities });
    var cutoff = m.end_s - CHART_SPAN_S;
    var drop = 0;
    while (drop < s.history.length && s.history[drop].end < cutoff) drop++;
    if (s.history.length - drop > MAX_POINTS) drop = s.history.length - MAX_POINTS;
    if (drop) s.history.splice(0, drop);
  }

  function handle(m) {
    switch (m.type) {
      case "hello": onHello(m); break;
      case "window": onWindow(m); break;
      case "speech_start": streamRecord(m.stream).speaking = true; break;
      case "speech_end": streamRecord(m.stream).speaking = false; break;
      case "stream_open": onOpen(m); break;
      case "stream_close": {
        var s = streamRecord(m.stream);
        s.open = false; s.speaking = false;
        break;
      }
      case "stats": state.stats = m; break;
      case "error": console.warn("server error", m.code, m.message); break;
      default: return; // unknown types are ignored (forward compatible)
    }
    scheduleRender();
  }

  // ---- connection -------------------------------------------------------------------------

  var socket = null;
  var failures = 0;
  var retryTimer = null;

  function setConnection(kind, text) {
    el.conn.dataset.state = kind;
    el.conn.textContent = text;
  }

  function wsUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  }

  function connect() {
    retryTimer = null;
    setConnection(failures ? "reconnecting" : "connecting",
                  failures ? "reconnecting…" : "connecting…");
    var ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (err) {
      setConnection("closed", "cannot connect: " + err.message);
      return;
    }
    socket = ws;
    ws.onopen = function () { setConnection("connected", "connected"); };
    ws.onmessage = function (event) {
      var m;
      try { m = JSON.parse(event.data); } catch (err) {
        console.warn("skipping a frame that is not JSON", err); return;
      }
      if (!m || typeof m.type !== "string" || m.v !== PROTOCOL_VERSION) {
        console.warn("skipping a frame of another protocol", m); return;
      }
      if (m.type === "hello") failures = 0;
      handle(m);
    };
    ws.onclose = function (event) {
      if (socket !== ws) return;
      socket = null;
      failures += 1;
      var base = Math.min(BACKOFF_MAX_MS, BACKOFF_INITIAL_MS * Math.pow(2, failures - 1));
      var delay = base * (0.5 + 0.5 * Math.random());
      var why = event.code === 1001 ? "server went away" :
        (event.code === 1006 ? "connection lost" : "closed " + event.code);
      setConnection("reconnecting", why + "; reconnecting in " + (delay / 1000).toFixed(1) + " s");
      state.streams.forEach(function (s) { s.speaking = false; }); // unknown while away
      scheduleRender();
      retryTimer = setTimeout(connect, delay);
    };
  }

  // ---- rendering --------------------------------------------------------------------------

  var renderPending = false;
  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    // a timer, not requestAnimationFrame: hidden tabs and headless browsers still update
    setTimeout(function () { renderPending = false; render(); }, 50);
  }

  function fmt(x, digits) { return Number(x).toFixed(digits); }

  function renderSelect() {
    var names = Array.from(state.streams.keys()).sort();
    if (state.selected === null || !state.streams.has(state.selected)) {
      state.selected = initialStream && state.streams.has(initialStream) ? initialStream
        : (names.length ? names[0] : null);
    }
    var sel = el.select;
    var wanted = names.map(function (n) {
      return n + (state.streams.get(n).open ? "" : " (closed)");
    });
    var current = Array.from(sel.options).map(function (o) { return o.textContent; });
    if (names.length === 0) {
      if (sel.options.length !== 1 || sel.options[0].value !== "") {
        sel.innerHTML = "";
        sel.add(new Option("no streams yet", ""));
      }
      sel.disabled = true;
      return;
    }
    if (current.join("\n") !== wanted.join("\n")) {
      sel.innerHTML = "";
      names.forEach(function (n, i) { sel.add(new Option(wanted[i], n)); });
    }
    sel.disabled = false;
    sel.value = state.selected;
  }

  function renderCurrent(s) {
    el.name.textContent = s ? "· " + s.name : "";
    var m = s && s.last;
    var label = m ? m.smoothed_label : "";
    if (el.label.dataset.label !== label) {   // aria-live: announce changes only
      el.label.dataset.label = label;
      el.label.textContent = m ? label : "—";
      el.label.style.color = m ? colour(label) : GREY;
    }
    el.confidence.textContent = m ? fmt(m.smoothed_confidence, 2) : "—";
    el.confidence.dataset.value = m ? String(m.smoothed_confidence) : "";
    var speaking = !!(s && s.speaking);
    el.speech.dataset.speaking = String(speaking);
    el.speech.querySelector(".text").textContent = speaking ? "speaking" : "quiet";
    el.streamState.dataset.open = s ? String(s.open) : "";
    el.streamState.textContent = s ? (s.open ? "stream open" : "stream closed") : "—";
    el.windowInfo.textContent = m
      ? "#" + m.seq + " · " + fmt(m.start_s, 1) + "–" + fmt(m.end_s, 1) + " s · raw " +
        m.label + " " + fmt(m.confidence, 2)
      : "";
    renderAge(s);

    var labels = state.labels;
    if (el.bars.children.length !== labels.length ||
        el.bars.dataset.labels !== labels.join("\n")) {
      el.bars.innerHTML = "";
      el.bars.dataset.labels = labels.join("\n");
      labels.forEach(function (name) {
        var li = document.createElement("li");
        li.dataset.label = name;
        li.innerHTML = '<span class="name"></span><span class="track" aria-hidden="true">' +
          '<span class="fill"></span></span><span class="value"></span>';
        li.querySelector(".name").textContent = name;
        li.querySelector(".fill").style.background = colour(name);
        el.bars.appendChild(li);
      });
      renderLegend();
    }
    Array.from(el.bars.children).forEach(function (li) {
      var p = m && m.probabilities[li.dataset.label];
      var has = typeof p === "number";
      li.querySelector(".fill").style.width = has ? (100 * p).toFixed(1) + "%" : "0";
      li.querySelector(".value").textContent = has ? fmt(p, 2) : "—";
      li.dataset.value = has ? String(p) : "";
    });
  }

  function renderAge(s) {
    if (!s || s.updatedWall === null) {
      el.lastUpdate.textContent = "no windows yet";
      el.lastUpdate.dataset.wallTime = "";
      return;
    }
    var age = Math.max(0, Date.now() / 1000 - s.updatedWall);
    el.lastUpdate.dataset.wallTime = String(s.updatedWall);
    el.lastUpdate.textContent = "updated " + (age < 60 ? fmt(age, 0) + " s" :
      fmt(age / 60, 0) + " min") + " ago";
  }

  function renderLegend() {
    el.legend.innerHTML = "";
    state.labels.forEach(function (name) {
      var li = document.createElement("li");
      var sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = colour(name);
      li.appendChild(sw);
      li.appendChild(document.createTextNode(name));
      el.legend.appendChild(li);
    });
  }

  function renderList() {
    var names = Array.from(state.streams.keys()).sort();
    el.list.innerHTML = "";
    names.forEach(function (name) {
      var s = state.streams.get(name);
      var li = document.createElement("li");
      li.dataset.stream = name;
      li.dataset.label = s.last ? s.last.smoothed_label : "";
      var b = document.createElement("button");
      b.type = "button";
      b.setAttribute("aria-pressed", String(name === state.selected));
      b.textContent = name;
      if (!s.open) b.classList.add("closed");
      var chip = document.createElement("span");
      chip.className = "chip";
      chip.textContent = s.last ? s.last.smoothed_label : "—";
      chip.style.color = s.last ? colour(s.last.smoothed_label) : GREY;
      b.appendChild(chip);
      b.addEventListener("click", function () { select(name); });
      li.appendChild(b);
      el.list.appendChild(li);
    });
  }

  function renderStats() {
    var st = state.stats;
    if (!st) {
      el.stats.textContent = "no stats yet";
      el.stats.dataset.lagS = "";
      el.stats.dataset.windowsDropped = "";
      return;
    }
    el.stats.dataset.lagS = String(st.lag_s);
    el.stats.dataset.windowsDropped = String(st.windows_dropped);
    el.stats.textContent = "lag " + fmt(st.lag_s, 2) + " s · windows " + st.windows_done +
      " · dropped " + st.windows_dropped + " · blocks dropped " + st.blocks_dropped +
      " · overflows " + st.input_overflows + " · clients " + st.clients +
      " · client drops " + st.client_messages_dropped;
  }

  function niceStep(span) {
    var steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600];
    for (var i = 0; i < steps.length; i++) if (span / steps[i] <= 7) return steps[i];
    return 1200;
  }

  function drawChart(s) {
    var canvas = el.chart;
    var dpr = window.devicePixelRatio || 1;
    var cssW = canvas.clientWidth || 800, cssH = canvas.clientHeight || 260;
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr);
      canvas.height = Math.round(cssH * dpr);
    }
    var ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    var L = 40, R = 10, T = 10, B = 28;
    var w = cssW - L - R, h = cssH - T - B;
    var hist = s ? s.history : [];
    // the axis grows from MIN_SPAN_S with the data, then rolls once it spans CHART_SPAN_S
    var tFirst = hist.length ? Math.floor(hist[0].end) : 0;
    var tLast = hist.length ? hist[hist.length - 1].end : 0;
    var span = Math.min(CHART_SPAN_S, Math.max(MIN_SPAN_S, tLast - tFirst));
    var t0 = tLast - tFirst < span ? tFirst : tLast - span;
    var t1 = t0 + span;
    var x = function (t) { return L + (t - t0) / span * w; };
    var y = function (p) { return T + (1 - p) * h; };

    ctx.font = "11px system-ui, sans-serif";
    ctx.strokeStyle = "#e3e7eb";
    ctx.fillStyle = "#5f6b76";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    [0, 0.25, 0.5, 0.75, 1].forEach(function (p) {
      ctx.beginPath(); ctx.moveTo(L, y(p)); ctx.lineTo(L + w, y(p)); ctx.stroke();
      ctx.fillText(p.toFixed(2), L - 4, y(p));
    });
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    var step = niceStep(span);
    for (var t = Math.ceil(Math.max(0, t0) / step) * step; t <= t1; t += step) {
      ctx.beginPath(); ctx.moveTo(x(t), T); ctx.lineTo(x(t), T + h); ctx.stroke();
      ctx.fillText(t + " s", x(t), T + h + 6);
    }

    var hop = state.hello ? state.hello.hop_s : 0.5;
    var win = state.hello ? state.hello.window_s : 2.0;
    var gap = Math.max(4 * hop, win + hop); // farther apart than this: a pause, break the line
    var shown = hist.filter(function (pt) { return pt.end >= t0; });
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    state.labels.forEach(function (label) {
      ctx.strokeStyle = colour(label);
      ctx.fillStyle = colour(label);
      ctx.beginPath();
      var prev = null;
      shown.forEach(function (pt) {
        var p = pt.p[label];
        if (typeof p !== "number") { prev = null; return; }
        if (prev === null || pt.end - prev > gap) {
          ctx.moveTo(x(pt.end), y(p));
          ctx.fillRect(x(pt.end) - 1.5, y(p) - 1.5, 3, 3); // a lone point stays visible
        } else {
          ctx.lineTo(x(pt.end), y(p));
        }
        prev = pt.end;
      });
      ctx.stroke();
    });
    canvas.dataset.points = String(shown.length);
    canvas.dataset.stream = s ? s.name : "";
    canvas.setAttribute("aria-label", s
      ? "class probabilities of stream " + s.name + ", " + shown.length + " windows"
      : "no stream selected");
  }

  function render() {
    renderSelect();
    var s = state.selected !== null ? state.streams.get(state.selected) : null;
    renderCurrent(s || null);
    renderList();
    renderStats();
    drawChart(s || null);
  }

  function select(name) {
    state.selected = name;
    scheduleRender();
  }

  el.select.addEventListener("change", function () { select(el.select.value); });
  window.addEventListener("resize", scheduleRender);
  setInterval(function () {
    renderAge(state.selected !== null ? state.streams.get(state.selected) : null);
  }, 1000);

  // exposed for debugging and tests: read-only view of what the page knows
  window.emotionMonitor = {
    state: state,
    connected: function () { return socket !== null && socket.readyState === 1; },
  };

  render();
  connect();
})();
