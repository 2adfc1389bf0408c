//! Which bytes make up an SQL word (an identifier or keyword) as PostgreSQL's lexer
//! reads one: a letter, `_` or any non-ASCII byte starts it; digits and `$` may follow.
//! A table, because the scanners that use it ask for every byte of a statement.

const WORD_START: u8 = 1;
const WORD_BYTE: u8 = 2;

static WORD_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            table[byte] = WORD_START | WORD_BYTE;
        } else if b.is_ascii_digit() || b == b'$' {
            table[byte] = WORD_BYTE;
        }
        byte += 1;
    }
    table
};

/// A byte that may start a word: a letter, `_` or a non-ASCII byte.
#[inline(always)]
pub fn is_word_start(byte: u8) -> bool {
    WORD_CLASS[byte as usize] & WORD_START != 0
}

/// A byte that may continue a word: a word start, a digit or `$`.
#[inline(always)]
pub fn is_word_byte(byte: u8) -> bool {
    WORD_CLASS[byte as usize] & WORD_BYTE != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_predicates_it_stands_for() {
        for byte in 0..=255u8 {
            let start = byte.is_ascii_alphabetic() || byte == b'_' || byte >= 0x80;
            assert_eq!(is_word_start(byte), start, "word start {byte}");
            assert_eq!(
                is_word_byte(byte),
                start || byte.is_ascii_digit() || byte == b'$',
                "word byte {byte}"
            );
        }
    }
}
