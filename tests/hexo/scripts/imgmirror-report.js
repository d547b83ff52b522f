/* The test blog's own site script (Hexo runs every file in a site's scripts/ folder). It injects,
 * at the end of every post page, two things the end-to-end test (tests/it/browser.rs) needs:
 *
 * 1. A stand-in for the theme's lazy loader. Volantis loads vanilla-lazyload from unpkg.com, which
 *    the test's Chromium cannot reach (every host name is unresolvable there), so this does what
 *    that loader does with the posts' markup: data-src / data-original become src, data-srcset
 *    becomes srcset.
 * 2. A report of every <img> once the window has loaded (final URL, natural width, decoded or
 *    not), every URL fetched (Resource Timing) and every element that failed to load, as JSON in
 *    <pre id="imgmirror-report">.
 *
 * Both generations of the test (before and after the rewrite) carry it, so it is no difference
 * between them. */
'use strict';

const script = `<script id="imgmirror-test">
(function () {
  var failed = [];
  window.addEventListener('error', function (e) {
    failed.push(e.target && (e.target.currentSrc || e.target.src) ? (e.target.currentSrc || e.target.src) : String(e.message));
  }, true);
  document.querySelectorAll('img').forEach(function (img) {
    var src = img.getAttribute('data-src') || img.getAttribute('data-original');
    if (img.hasAttribute('data-srcset')) img.setAttribute('srcset', img.getAttribute('data-srcset'));
    if (src) img.setAttribute('src', src);
  });
  window.addEventListener('load', function () {
    var images = Array.prototype.map.call(document.images, function (img) {
      return { src: img.currentSrc || img.src, width: img.naturalWidth,
               ok: img.complete && img.naturalWidth > 0 };
    });
    var resources = performance.getEntriesByType('resource').map(function (e) { return e.name; });
    var pre = document.createElement('pre');
    pre.id = 'imgmirror-report';
    pre.textContent = JSON.stringify({ images: images, resources: resources, failed: failed });
    document.body.appendChild(pre);
  });
})();
</script>`;

hexo.extend.injector.register('body_end', script, 'post');
