/*
 * SPDX-License-Identifier: Apache-2.0
 */
package org.lsros.lucene;

import org.apache.lucene.analysis.TokenStream;
import org.apache.lucene.analysis.tokenattributes.CharTermAttribute;
import org.apache.lucene.analysis.tokenattributes.TermFrequencyAttribute;

/** Terms with given frequencies, as delimited_term_freq makes them (tests; a null term is skipped). */
final class FreqTokenStream extends TokenStream {
    private final CharTermAttribute term = addAttribute(CharTermAttribute.class);
    private final TermFrequencyAttribute freq = addAttribute(TermFrequencyAttribute.class);
    private final Object[] pairs;
    private int next;

    FreqTokenStream(Object... pairs) {
        this.pairs = pairs;
    }

    @Override
    public boolean incrementToken() {
        while (next < pairs.length && pairs[next] == null) {
            next += 2;
        }
        if (next >= pairs.length) {
            return false;
        }
        clearAttributes();
        term.append((String) pairs[next]);
        freq.setTermFrequency((Integer) pairs[next + 1]);
        next += 2;
        return true;
    }

    @Override
    public void reset() {
        next = 0;
    }
}
