;; LZ4 block codec in WebAssembly: the edgekit-lz4/1 encoder and a block decoder.
;;
;; The encoder is the greedy match finder of lz4EncoderJs() in lz4.ts, step for step, so it
;; writes the same bytes (test/fs-lz4.test.ts checks both against each other and against a
;; hash of what the first edgekit-lz4/1 wrote). Why WebAssembly: an OTA delta rebuilds the
;; changed blocks of a root on the device, and encoding them was the largest part of applying
;; one; V8 runs this about 1.8x faster than the JavaScript (unaligned 32/64-bit loads, no
;; typed-array bounds checks). The decoder checks every length and offset like lz4DecompressJs.
;;
;; Edit this file, then run scripts/build-lz4-wasm.mjs to regenerate lz4-wasm.ts.
;;
;; Memory (40 pages, 2.5 MiB):
;;   [0, 256 KiB)              hash table: 65536 positions, each (generation base + position)
;;   [256 KiB, 1280 KiB)       raw area: the block to compress, or the decoded block
;;   [1280 KiB, ...)           compressed area (at most lz4Bound(1 MiB) bytes)
;; compress(n, b) compresses the n bytes of the raw area with table entries below b treated as
;; stale, and returns the compressed length. Short literal runs are copied 16 bytes at a time,
;; which may write past the compressed length and read past the block: both stay inside memory,
;; and bytes past the returned length are never read back.
(module
  (memory (export "memory") 40)
  (func $len (param $op i32) (param $len i32) (result i32)
    (block $done
      (loop $more
        (br_if $done (i32.lt_u (local.get $len) (i32.const 255)))
        (i32.store8 offset=1310720 (local.get $op) (i32.const 255))
        (local.set $op (i32.add (local.get $op) (i32.const 1)))
        (local.set $len (i32.sub (local.get $len) (i32.const 255)))
        (br $more)))
    (i32.store8 offset=1310720 (local.get $op) (local.get $len))
    (i32.add (local.get $op) (i32.const 1)))
  (func (export "compress") (param $n i32) (param $b i32) (result i32)
    (local $anchor i32) (local $op i32) (local $ip i32) (local $misses i32)
    (local $mflimit i32) (local $matchlimit i32) (local $wordlimit i32)
    (local $seq i32) (local $h i32) (local $ref i32) (local $start i32) (local $from i32)
    (local $end i32) (local $r i32) (local $x i32) (local $lit i32) (local $ml i32) (local $x64 i64)
    (if (i32.ge_s (local.get $n) (i32.const 13))
      (then
        (local.set $mflimit (i32.sub (local.get $n) (i32.const 12)))
        (local.set $matchlimit (i32.sub (local.get $n) (i32.const 5)))
        (local.set $wordlimit (i32.sub (local.get $n) (i32.const 9)))
        (local.set $ip (i32.const 1))
        (local.set $misses (i32.const 64))
        (block $exit
          (loop $main
            (br_if $exit (i32.ge_s (local.get $ip) (local.get $mflimit)))
            (local.set $seq (i32.load offset=262144 align=1 (local.get $ip)))
            (local.set $h (i32.shl (i32.shr_u (i32.mul (local.get $seq) (i32.const -1640531535)) (i32.const 16)) (i32.const 2)))
            (local.set $ref (i32.sub (i32.load (local.get $h)) (local.get $b)))
            (i32.store (local.get $h) (i32.add (local.get $b) (local.get $ip)))
            (if (i32.or
                  (i32.or (i32.lt_s (local.get $ref) (i32.const 0))
                          (i32.gt_s (i32.sub (local.get $ip) (local.get $ref)) (i32.const 65535)))
                  (i32.ne (i32.load offset=262144 align=1 (select (local.get $ref) (i32.const 0) (i32.ge_s (local.get $ref) (i32.const 0)))) (local.get $seq)))
              (then
                (local.set $ip (i32.add (local.get $ip) (i32.shr_u (local.get $misses) (i32.const 6))))
                (local.set $misses (i32.add (local.get $misses) (i32.const 1)))
                (br $main)))
            (local.set $misses (i32.const 64))
            (local.set $start (local.get $ip))
            (local.set $from (local.get $ref))
            (block $bdone
              (loop $back
                (br_if $bdone (i32.le_s (local.get $start) (local.get $anchor)))
                (br_if $bdone (i32.le_s (local.get $from) (i32.const 0)))
                (br_if $bdone (i32.ne (i32.load8_u offset=262143 (local.get $start)) (i32.load8_u offset=262143 (local.get $from))))
                (local.set $start (i32.sub (local.get $start) (i32.const 1)))
                (local.set $from (i32.sub (local.get $from) (i32.const 1)))
                (br $back)))
            (local.set $end (i32.add (local.get $ip) (i32.const 4)))
            (local.set $r (i32.add (local.get $ref) (i32.const 4)))
            (block $fdone
              (loop $fwd
                (if (i32.le_s (local.get $end) (i32.sub (local.get $wordlimit) (i32.const 4)))
                  (then
                    (local.set $x64 (i64.xor (i64.load offset=262144 align=1 (local.get $end)) (i64.load offset=262144 align=1 (local.get $r))))
                    (if (i64.eqz (local.get $x64))
                      (then
                        (local.set $end (i32.add (local.get $end) (i32.const 8)))
                        (local.set $r (i32.add (local.get $r) (i32.const 8)))
                        (br $fwd)))
                    (local.set $end (i32.add (local.get $end) (i32.wrap_i64 (i64.shr_u (i64.ctz (local.get $x64)) (i64.const 3)))))
                    (br $fdone)))
                (if (i32.le_s (local.get $end) (local.get $wordlimit))
                  (then
                    (local.set $x (i32.xor (i32.load offset=262144 align=1 (local.get $end)) (i32.load offset=262144 align=1 (local.get $r))))
                    (if (i32.eqz (local.get $x))
                      (then
                        (local.set $end (i32.add (local.get $end) (i32.const 4)))
                        (local.set $r (i32.add (local.get $r) (i32.const 4)))
                        (br $fwd)))
                    (local.set $end (i32.add (local.get $end) (i32.shr_u (i32.ctz (local.get $x)) (i32.const 3))))
                    (br $fdone)))
                (block $bytes_done
                  (loop $bytes
                    (br_if $bytes_done (i32.ge_s (local.get $end) (local.get $matchlimit)))
                    (br_if $bytes_done (i32.ne (i32.load8_u offset=262144 (local.get $end)) (i32.load8_u offset=262144 (local.get $r))))
                    (local.set $end (i32.add (local.get $end) (i32.const 1)))
                    (local.set $r (i32.add (local.get $r) (i32.const 1)))
                    (br $bytes)))))
            (local.set $lit (i32.sub (local.get $start) (local.get $anchor)))
            (local.set $ml (i32.sub (i32.sub (local.get $end) (local.get $start)) (i32.const 4)))
            (i32.store8 offset=1310720 (local.get $op)
              (i32.or
                (i32.shl (select (local.get $lit) (i32.const 15) (i32.lt_s (local.get $lit) (i32.const 15))) (i32.const 4))
                (select (local.get $ml) (i32.const 15) (i32.lt_s (local.get $ml) (i32.const 15)))))
            (local.set $op (i32.add (local.get $op) (i32.const 1)))
            (if (i32.ge_s (local.get $lit) (i32.const 15))
              (then (local.set $op (call $len (local.get $op) (i32.sub (local.get $lit) (i32.const 15))))))
            (if (i32.le_s (local.get $lit) (i32.const 16))
              (then
                (i64.store offset=1310720 align=1 (local.get $op) (i64.load offset=262144 align=1 (local.get $anchor)))
                (i64.store offset=1310728 align=1 (local.get $op) (i64.load offset=262152 align=1 (local.get $anchor))))
              (else
                (memory.copy (i32.add (local.get $op) (i32.const 1310720)) (i32.add (local.get $anchor) (i32.const 262144)) (local.get $lit))))
            (local.set $op (i32.add (local.get $op) (local.get $lit)))
            (i32.store16 offset=1310720 align=1 (local.get $op) (i32.sub (local.get $start) (local.get $from)))
            (local.set $op (i32.add (local.get $op) (i32.const 2)))
            (if (i32.ge_s (local.get $ml) (i32.const 15))
              (then (local.set $op (call $len (local.get $op) (i32.sub (local.get $ml) (i32.const 15))))))
            (local.set $ip (local.get $end))
            (local.set $anchor (local.get $end))
            (if (i32.lt_s (local.get $ip) (local.get $mflimit))
              (then
                (i32.store
                  (i32.shl (i32.shr_u (i32.mul (i32.load offset=262142 align=1 (local.get $ip)) (i32.const -1640531535)) (i32.const 16)) (i32.const 2))
                  (i32.sub (i32.add (local.get $b) (local.get $ip)) (i32.const 2)))))
            (br $main)))))
    (local.set $lit (i32.sub (local.get $n) (local.get $anchor)))
    (i32.store8 offset=1310720 (local.get $op)
      (i32.shl (select (local.get $lit) (i32.const 15) (i32.lt_s (local.get $lit) (i32.const 15))) (i32.const 4)))
    (local.set $op (i32.add (local.get $op) (i32.const 1)))
    (if (i32.ge_s (local.get $lit) (i32.const 15))
      (then (local.set $op (call $len (local.get $op) (i32.sub (local.get $lit) (i32.const 15))))))
    (memory.copy (i32.add (local.get $op) (i32.const 1310720)) (i32.add (local.get $anchor) (i32.const 262144)) (local.get $lit))
    (i32.add (local.get $op) (local.get $lit)))
  ;; decompress(end, cap): decodes the block of `end` bytes at 1280 KiB into the `cap` bytes at
  ;; 256 KiB (the roles of the encoder's two areas swapped) and returns the decoded length, or a
  ;; negative code for a corrupt block (lz4.ts names them): every length and offset is checked
  ;; against both areas, as lz4DecompressJs does. Fast copies (8 or 16 bytes at a time) run only
  ;; where they stay inside both `end` and `cap`.
  (func (export "decompress") (param $end i32) (param $cap i32) (result i32)
    (local $ip i32) (local $op i32) (local $token i32) (local $lit i32) (local $len i32)
    (local $x i32) (local $offset i32) (local $from i32) (local $stop i32)
    (loop $seq
      (if (i32.ge_u (local.get $ip) (local.get $end)) (then (return (i32.const -1))))
      (local.set $token (i32.load8_u offset=1310720 (local.get $ip)))
      (local.set $ip (i32.add (local.get $ip) (i32.const 1)))
      (local.set $lit (i32.shr_u (local.get $token) (i32.const 4)))
      (if (i32.eq (local.get $lit) (i32.const 15))
        (then
          (loop $more
            (if (i32.ge_u (local.get $ip) (local.get $end)) (then (return (i32.const -2))))
            (local.set $x (i32.load8_u offset=1310720 (local.get $ip)))
            (local.set $ip (i32.add (local.get $ip) (i32.const 1)))
            (local.set $lit (i32.add (local.get $lit) (local.get $x)))
            (br_if $more (i32.eq (local.get $x) (i32.const 255))))))
      (if (i32.or (i32.gt_u (i32.add (local.get $ip) (local.get $lit)) (local.get $end))
                  (i32.gt_u (i32.add (local.get $op) (local.get $lit)) (local.get $cap)))
        (then (return (i32.const -3))))
      (if (i32.and (i32.le_u (local.get $lit) (i32.const 16))
                   (i32.and (i32.le_u (i32.add (local.get $ip) (i32.const 16)) (local.get $end))
                            (i32.le_u (i32.add (local.get $op) (i32.const 16)) (local.get $cap))))
        (then
          (i64.store offset=262144 align=1 (local.get $op) (i64.load offset=1310720 align=1 (local.get $ip)))
          (i64.store offset=262152 align=1 (local.get $op) (i64.load offset=1310728 align=1 (local.get $ip))))
        (else
          (memory.copy (i32.add (local.get $op) (i32.const 262144)) (i32.add (local.get $ip) (i32.const 1310720)) (local.get $lit))))
      (local.set $ip (i32.add (local.get $ip) (local.get $lit)))
      (local.set $op (i32.add (local.get $op) (local.get $lit)))
      (if (i32.eq (local.get $ip) (local.get $end)) (then (return (local.get $op))))
      (if (i32.gt_u (i32.add (local.get $ip) (i32.const 2)) (local.get $end)) (then (return (i32.const -4))))
      (local.set $offset (i32.load16_u offset=1310720 align=1 (local.get $ip)))
      (local.set $ip (i32.add (local.get $ip) (i32.const 2)))
      (local.set $len (i32.and (local.get $token) (i32.const 15)))
      (if (i32.eq (local.get $len) (i32.const 15))
        (then
          (loop $more
            (if (i32.ge_u (local.get $ip) (local.get $end)) (then (return (i32.const -2))))
            (local.set $x (i32.load8_u offset=1310720 (local.get $ip)))
            (local.set $ip (i32.add (local.get $ip) (i32.const 1)))
            (local.set $len (i32.add (local.get $len) (local.get $x)))
            (br_if $more (i32.eq (local.get $x) (i32.const 255))))))
      (local.set $len (i32.add (local.get $len) (i32.const 4)))
      (if (i32.or (i32.eqz (local.get $offset)) (i32.gt_u (local.get $offset) (local.get $op)))
        (then (return (i32.const -5))))
      (if (i32.gt_u (i32.add (local.get $op) (local.get $len)) (local.get $cap)) (then (return (i32.const -6))))
      (local.set $from (i32.sub (local.get $op) (local.get $offset)))
      (local.set $stop (i32.add (local.get $op) (local.get $len)))
      (if (i32.and (i32.ge_u (local.get $offset) (i32.const 8))
                   (i32.le_u (i32.add (local.get $stop) (i32.const 8)) (local.get $cap)))
        (then
          ;; With the source at least 8 behind, each word read is already written: an
          ;; overlapping match (a repeated pattern) comes out as the format defines it.
          (loop $words
            (i64.store offset=262144 align=1 (local.get $op) (i64.load offset=262144 align=1 (local.get $from)))
            (local.set $op (i32.add (local.get $op) (i32.const 8)))
            (local.set $from (i32.add (local.get $from) (i32.const 8)))
            (br_if $words (i32.lt_u (local.get $op) (local.get $stop)))))
        (else
          (loop $bytes
            (i32.store8 offset=262144 (local.get $op) (i32.load8_u offset=262144 (local.get $from)))
            (local.set $op (i32.add (local.get $op) (i32.const 1)))
            (local.set $from (i32.add (local.get $from) (i32.const 1)))
            (br_if $bytes (i32.lt_u (local.get $op) (local.get $stop))))))
      (local.set $op (local.get $stop))
      (br $seq))
    (unreachable)))

