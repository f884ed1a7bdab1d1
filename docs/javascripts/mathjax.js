// MathJax for the formulas pymdownx.arithmatex marks (generic mode: \( \) inline, \[ \] display).
window.MathJax = {
  tex: {inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true, processEnvironments: true},
  options: {ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex"},
};
// Material loads pages without a full reload ("instant" navigation): typeset each new page.
document$.subscribe(() => { MathJax.typesetPromise(); });
