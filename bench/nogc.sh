#!/usr/bin/env bash
# bench/nogc.sh FILE...: for each callgrind output file, its instructions
# without the garbage collector's, from callgrind_annotate's per-function
# (self) counts. The collector's are those in runtime/mgc*.go (marking,
# sweeping, pacing, assists, the green tea span scanner), the write
# barrier's buffer (runtime/mwbbuf.go, gcWriteBarrier*, bulkBarrier*), and
# the object lookups only marking makes (findObject, tryDeferToSpanScan,
# greyobject, typePointers, extractHeapBitsSmall, the span sets and inline
# mark bits of the green tea scanner), the assists' accounting
# (deductAssistCredit), the stack maps read to scan stacks (pcvalue, step,
# getStackMap) and the page allocator's bookkeeping as swept spans are
# freed (pallocBits, binarySearchTree). Which requests a collection lands among is
# chance, and its length grows with the live heap, not with a request's
# work: without it, two counts of one scenario agree within about ±1.5%.
#
# Prints: FILE<TAB>total<TAB>collector<TAB>without the collector
set -euo pipefail
for file in "$@"; do
	callgrind_annotate --inclusive=no --threshold=100 --auto=no "$file" 2>/dev/null | awk -v file="$file" '
		/PROGRAM TOTALS/ { total = $1; gsub(",", "", total); next }
		/^ *[0-9,]+ \( *[0-9.]+%\) / {
			n = $1; gsub(",", "", n)
			if ($0 ~ /\/runtime\/mgc[^\/ ]*\.go:/ || $0 ~ /\/runtime\/mwbbuf\.go:/ ||
				$0 ~ /:runtime\.(gcWriteBarrier|bulkBarrier|findObject|tryDeferToSpanScan|greyobject|typePointers|extractHeapBitsSmall|scanSpan|spanSetScans|\(\*spanInlineMarkBits\)|\(\*mspan\)\.moveInlineMarks|\(\*spanSet\)|\(\*mheap\)\.nextSpanForSweep|deductAssistCredit|pcvalue|step|\(\*stkframe\)\.getStackMap|\(\*pallocBits\)|binarySearchTree)/)
				gc += n
		}
		END { printf "%s\t%d\t%d\t%d\n", file, total, gc, total - gc }'
done
