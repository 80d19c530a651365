// Cairn console: draws a definition's activity tree as an SVG diagram.
//
// Sequences run top to bottom; flow branches, if/else arms, switch cases
// and pick arms stand side by side; scopes are frames with their fault and
// event handlers (and a compensation handler) beside the body; while,
// repeat-until and for-each loops are frames with a loop-back arrow. Every activity's box carries its path
// (data-path), so that the page can overlay counts (a heat map), the
// positions of an instance, breakpoints, and take clicks.

const SVG_NS = 'http://www.w3.org/2000/svg';
const LEAF_W = 176;
const LEAF_H = 44;
const GAP = 22;
const PAD = 12;
const HEAD = 24;
const LABEL_H = 18;
const LOOP_M = 18;

const HORIZONTAL = new Set(['flow', 'if', 'switch', 'pick']);
const LOOPS = new Set(['while', 'repeat-until', 'for-each']);

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function text(parent, x, y, s, cls, anchor) {
  const t = el('text', { x, y, class: cls || '', 'text-anchor': anchor || 'start' }, parent);
  t.textContent = s;
  return t;
}

function clip(s, n) {
  return s.length > n ? s.slice(0, n - 1) + '…' : s;
}

function isLeaf(n) {
  return n.kind !== 'scope' && (!n.children || n.children.length === 0) && n.kind !== 'sequence' && n.kind !== 'flow';
}

function horizontal(n) {
  return HORIZONTAL.has(n.kind) || (n.kind === 'for-each' && n.parallel);
}

// Sizes every node (w, h) bottom up.
function measure(n) {
  if (isLeaf(n)) {
    n._w = LEAF_W;
    n._h = LEAF_H;
    return;
  }
  const kids = n.children || [];
  kids.forEach(measure);
  const labels = kids.some((k) => k.label) ? LABEL_H : 0;
  let iw;
  let ih;
  if (kids.length === 0) {
    iw = LEAF_W;
    ih = 8;
  } else if (horizontal(n)) {
    iw = kids.reduce((s, k) => s + k._w, 0) + GAP * (kids.length - 1);
    ih = Math.max(...kids.map((k) => k._h)) + labels + (n.kind === 'flow' || n.parallel ? 2 * 10 : 10);
  } else {
    iw = Math.max(...kids.map((k) => k._w));
    ih = kids.reduce((s, k) => s + k._h, 0) + GAP * (kids.length - 1);
  }
  n._iw = iw;
  n._ih = ih;
  let w = iw + 2 * PAD + (LOOPS.has(n.kind) && !n.parallel ? LOOP_M : 0);
  let h = HEAD + ih + 2 * PAD;
  if (n.kind === 'scope') {
    const side = [];
    for (const hd of n.handlers || []) {
      if (hd.body) measure(hd.body);
      const bw = hd.body ? hd.body._w : LEAF_W - 2 * PAD;
      const bh = hd.body ? hd.body._h : 14;
      side.push({ w: bw + 2 * PAD, h: HEAD + bh + PAD });
    }
    if (n.compensation) side.push({ w: LEAF_W, h: 34 });
    n._side = side;
    if (side.length) {
      const sw = Math.max(...side.map((s) => s.w));
      const sh = side.reduce((s, x) => s + x.h, 0) + PAD * (side.length - 1);
      n._sw = sw;
      w += sw + PAD;
      h = Math.max(h, HEAD + sh + 2 * PAD);
    }
  }
  n._w = Math.max(w, 150);
  n._h = h;
}

class Diagram {
  constructor(root, onClick) {
    this.root = root;
    this.onClick = onClick;
    this.boxes = new Map();
    measure(root);
    const w = root._w + 40;
    const h = root._h + 40;
    this.svg = el('svg', { class: 'diagram', width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: 'img' });
    const defs = el('defs', {}, this.svg);
    const marker = el('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' }, defs);
    el('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead' }, marker);
    this.edges = el('g', { class: 'edges' }, this.svg);
    this.nodes = el('g', { class: 'nodes' }, this.svg);
    this.overlay = el('g', { class: 'overlay' }, this.svg);
    this.draw(root, 20, 20, this.nodes);
  }

  line(points, arrow) {
    const attrs = { points: points.map((p) => p.join(',')).join(' '), class: 'edge' };
    if (arrow) attrs['marker-end'] = 'url(#arrow)';
    el('polyline', attrs, this.edges);
  }

  register(n, g, rect, x, y, w, h) {
    g.setAttribute('data-path', n.path);
    g.setAttribute('data-kind', n.kind);
    const title = el('title', {}, g);
    title.textContent = `${n.path} (${n.kind})${n.detail ? ': ' + n.detail : ''}`;
    g.addEventListener('click', (ev) => {
      ev.stopPropagation();
      if (this.onClick) this.onClick(n.path, n);
    });
    this.boxes.set(n.path, { g, rect, x, y, w, h, node: n });
  }

  draw(n, x, y, parent) {
    const g = el('g', { class: `act kind-${n.kind}` }, parent);
    if (isLeaf(n)) {
      const rect = el('rect', { x, y, width: n._w, height: n._h, rx: 7, class: 'box' }, g);
      text(g, x + 10, y + 18, clip(n.name, 22), 'name');
      text(g, x + 10, y + 34, clip(n.kind + (n.detail ? ' · ' + n.detail : ''), 30), 'kind');
      if (n.commit_before) el('line', { x1: x + 6, y1: y - 1, x2: x + n._w - 6, y2: y - 1, class: 'commit' }, g);
      if (n.commit_after) el('line', { x1: x + 6, y1: y + n._h + 1, x2: x + n._w - 6, y2: y + n._h + 1, class: 'commit' }, g);
      this.register(n, g, rect, x, y, n._w, n._h);
      return;
    }
    const frame = el('rect', { x, y, width: n._w, height: n._h, rx: 9, class: `frame frame-${n.kind}` }, g);
    const head = el('rect', { x, y, width: n._w, height: HEAD, rx: 9, class: 'head' }, g);
    head.setAttribute('data-head', '1');
    const label = `${n.kind} ${n.name}${n.detail ? ' · ' + n.detail : ''}`;
    text(g, x + 10, y + 16, clip(label, Math.floor(n._w / 7)), 'frame-label');
    this.register(n, g, head, x, y, n._w, HEAD);
    const kids = n.children || [];
    const ix = x + PAD;
    const iy = y + HEAD + PAD;
    if (horizontal(n)) {
      const labels = kids.some((k) => k.label) ? LABEL_H : 0;
      const fork = iy;
      let cx = ix + Math.max(0, (n._iw - (kids.reduce((s, k) => s + k._w, 0) + GAP * (kids.length - 1))) / 2);
      const centers = [];
      const bottoms = [];
      for (const k of kids) {
        const ky = iy + 10 + labels;
        if (k.label) text(g, cx + k._w / 2, iy + 10 + 12, clip(k.label, Math.floor(k._w / 6.5)), 'arm-label', 'middle');
        this.draw(k, cx, ky, g);
        centers.push(cx + k._w / 2);
        bottoms.push([cx + k._w / 2, ky + k._h]);
        this.line([[cx + k._w / 2, fork], [cx + k._w / 2, ky]], true);
        cx += k._w + GAP;
      }
      if (centers.length > 1) {
        this.line([[centers[0], fork], [centers[centers.length - 1], fork]], false);
        const join = y + n._h - PAD + 2;
        if (n.kind === 'flow' || n.parallel) {
          for (const [bx, by] of bottoms) this.line([[bx, by], [bx, join]], false);
          this.line([[centers[0], join], [centers[centers.length - 1], join]], false);
        }
      }
      return;
    }
    // Vertical: a sequence's children, a loop's body, a scope's body.
    let cy = iy;
    let prev = null;
    const bodyW = n.kind === 'scope' && n._sw ? n._w - n._sw - PAD : n._w - (LOOPS.has(n.kind) ? LOOP_M : 0);
    for (const k of kids) {
      const kx = x + (bodyW - k._w) / 2;
      this.draw(k, kx, cy, g);
      const cxm = x + bodyW / 2;
      if (prev !== null) this.line([[cxm, prev], [cxm, cy]], true);
      prev = cy + k._h;
      cy += k._h + GAP;
    }
    if (LOOPS.has(n.kind) && kids.length) {
      const rx = x + n._w - LOOP_M / 2 - 2;
      const k = kids[0];
      const top = iy + 8;
      const bottom = iy + k._h - 8;
      const kx = x + (bodyW + k._w) / 2;
      this.line([[kx, bottom], [rx, bottom], [rx, top], [kx, top]], true);
      text(g, rx + 2, iy - 3, '↻', 'loop-mark', 'middle');
    }
    if (n.kind === 'scope' && n._side && n._side.length) {
      let sy = y + HEAD + PAD;
      const sx = x + n._w - n._sw - PAD / 2;
      let i = 0;
      for (const hd of n.handlers || []) {
        const s = n._side[i++];
        const hg = el('g', { class: 'handler' }, g);
        el('rect', { x: sx, y: sy, width: n._sw, height: s.h, rx: 7, class: 'handler-frame' }, hg);
        text(hg, sx + 8, sy + 16, clip(hd.label, Math.floor(n._sw / 6.5)), 'handler-label');
        if (hd.body) this.draw(hd.body, sx + (n._sw - hd.body._w) / 2, sy + HEAD, hg);
        else text(hg, sx + 8, sy + HEAD + 10, 'handler only, no body', 'kind');
        sy += s.h + PAD;
      }
      if (n.compensation) {
        const cg = el('g', { class: 'handler compensation' }, g);
        el('rect', { x: sx, y: sy, width: n._sw, height: 34, rx: 7, class: 'handler-frame' }, cg);
        text(cg, sx + 8, sy + 21, 'compensation handler', 'handler-label');
      }
    }
  }

  // Overlays: `heat` path -> {waiting, running, suspended, faulted};
  // `positions` paths where an instance stands; `stopped` the path it
  // stopped at; `breakpoints` paths with a breakpoint.
  decorate({ heat, positions, stopped, breakpoints }) {
    this.overlay.replaceChildren();
    let max = 1;
    for (const c of Object.values(heat || {})) max = Math.max(max, (c.waiting || 0) + (c.running || 0) + (c.suspended || 0));
    for (const [path, b] of this.boxes) {
      b.g.classList.remove('pos', 'stopped', 'bp', 'hot');
      b.rect.style.removeProperty('fill');
      const c = (heat || {})[path];
      if (c) {
        const here = (c.waiting || 0) + (c.running || 0) + (c.suspended || 0);
        const faulted = c.faulted || 0;
        if (here > 0) {
          b.g.classList.add('hot');
          b.rect.style.fill = `rgba(37, 99, 235, ${0.10 + 0.40 * (here / max)})`;
        }
        let bx = b.x + b.w - 4;
        if (faulted > 0) {
          this.badge(bx, b.y, faulted, 'badge-faulted', `${faulted} faulted at ${path}`, path);
          bx -= 26;
        }
        if (here > 0) {
          const parts = ['waiting', 'running', 'suspended'].filter((s) => c[s]).map((s) => `${c[s]} ${s}`);
          this.badge(bx, b.y, here, 'badge-here', `${parts.join(', ')} at ${path}`, path);
        }
      }
    }
    for (const p of positions || []) {
      const b = this.boxes.get(p);
      if (b) {
        b.g.classList.add('pos');
        el('rect', { x: b.x - 4, y: b.y - 4, width: b.w + 8, height: b.h + 8, rx: 10, class: 'pos-ring', 'data-pos': p }, this.overlay);
      }
    }
    if (stopped) {
      const b = this.boxes.get(stopped);
      if (b) b.g.classList.add('stopped');
    }
    for (const p of breakpoints || []) {
      const b = this.boxes.get(p);
      if (!b) continue;
      b.g.classList.add('bp');
      const dot = el('circle', { cx: b.x, cy: b.y + Math.min(b.h, LEAF_H) / 2, r: 7, class: 'bp-dot', 'data-bp': p }, this.overlay);
      el('title', {}, dot).textContent = `breakpoint before ${p}`;
    }
  }

  badge(x, y, n, cls, title, path) {
    const g = el('g', { class: `badge ${cls}`, 'data-badge': path }, this.overlay);
    const label = String(n);
    const w = Math.max(22, 8 + 7 * label.length);
    el('rect', { x: x - w, y: y - 9, width: w, height: 18, rx: 9 }, g);
    text(g, x - w / 2, y + 4, label, 'badge-text', 'middle');
    el('title', {}, g).textContent = title;
  }
}

window.CairnDiagram = Diagram;
