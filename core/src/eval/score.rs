//! Answer scores: exact match, cover exact match and token F1, with Search-R1's normalisation.
//!
//! `normalize` reproduces Search-R1's `normalize_answer` (`verl/utils/reward_score/qa_em.py`,
//! itself SQuAD's): lowercase, delete every ASCII punctuation character (`string.punctuation`),
//! replace the whole words `a`, `an`, `the` by a space, collapse whitespace. Non-ASCII
//! punctuation (curly quotes, dashes) is kept, exactly as the Python code keeps it; "whole word"
//! follows Python's Unicode `\b` (letters, digits and `_` are word characters).

use std::collections::HashMap;

/// Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Search-R1's answer normalisation (see the module docs).
pub fn normalize(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !PUNCTUATION.contains(*c))
        .collect();
    // Remove the articles as whole words (`\b(a|an|the)\b` -> " ").
    let chars: Vec<char> = lower.chars().collect();
    let mut out = String::with_capacity(lower.len());
    let mut i = 0;
    while i < chars.len() {
        let at_start = i == 0 || !is_word_char(chars[i - 1]);
        let mut matched = 0;
        if at_start {
            for art in ["the", "an", "a"] {
                let n = art.chars().count();
                if i + n <= chars.len()
                    && chars[i..i + n].iter().copied().eq(art.chars())
                    && (i + n == chars.len() || !is_word_char(chars[i + n]))
                {
                    matched = n;
                    break;
                }
            }
        }
        if matched > 0 {
            out.push(' ');
            i += matched;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Exact match: 1 if the normalised prediction equals any normalised golden answer.
pub fn exact_match(prediction: &str, golden: &[String]) -> f64 {
    let p = normalize(prediction);
    if golden.iter().any(|g| normalize(g) == p) {
        1.0
    } else {
        0.0
    }
}

/// Cover EM (Search-R1's `subem_check`): 1 if some normalised golden answer is a substring of
/// the normalised prediction (a plain substring test, as in the reference).
pub fn cover_exact_match(prediction: &str, golden: &[String]) -> f64 {
    let p = normalize(prediction);
    if golden.iter().any(|g| p.contains(&normalize(g))) {
        1.0
    } else {
        0.0
    }
}

/// Token F1 on normalised whitespace tokens, the best over golden answers. As in FlashRAG and
/// HotpotQA's official scorer, a `yes`/`no`/`noanswer` prediction or reference scores 0 unless
/// both are identical (token overlap between "no" and "no idea" would be meaningless).
pub fn f1(prediction: &str, golden: &[String]) -> f64 {
    let p = normalize(prediction);
    golden
        .iter()
        .map(|g| {
            let g = normalize(g);
            let special = ["yes", "no", "noanswer"];
            if (special.contains(&p.as_str()) || special.contains(&g.as_str())) && p != g {
                return 0.0;
            }
            let pt: Vec<&str> = p.split_whitespace().collect();
            let gt: Vec<&str> = g.split_whitespace().collect();
            let mut counts: HashMap<&str, i64> = HashMap::new();
            for t in &gt {
                *counts.entry(t).or_default() += 1;
            }
            let mut common = 0;
            for t in &pt {
                if let Some(c) = counts.get_mut(t)
                    && *c > 0
                {
                    *c -= 1;
                    common += 1;
                }
            }
            if common == 0 {
                return 0.0;
            }
            let precision = common as f64 / pt.len() as f64;
            let recall = common as f64 / gt.len() as f64;
            2.0 * precision * recall / (precision + recall)
        })
        .fold(0.0, f64::max)
}

/// Whether `text` contains `answer` after normalising both, as whole normalised words (so
/// "paris" is found in "... in paris, france" but not in "parisian").
pub fn contains_normalized(text: &str, answer: &str) -> bool {
    let a = normalize(answer);
    if a.is_empty() {
        return false;
    }
    format!(" {} ", normalize(text)).contains(&format!(" {a} "))
}

/// Whether `text` contains some golden answer verbatim (case-sensitive, unnormalised): the
/// test of Search-R1's `info_contains_answer` validation metric.
pub fn contains_verbatim(text: &str, golden: &[String]) -> bool {
    golden
        .iter()
        .any(|g| !g.is_empty() && text.contains(g.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn normalisation_matches_search_r1() {
        // Expected values computed with Search-R1's Python normalize_answer.
        assert_eq!(normalize("The  Beatles!"), "beatles");
        assert_eq!(normalize("A.B.C."), "abc");
        assert_eq!(normalize("an apple a day"), "apple day");
        assert_eq!(normalize("Theatre"), "theatre");
        assert_eq!(normalize("l'amour"), "lamour");
        // Punctuation goes first, so "the-end" becomes "theend" (not an article).
        assert_eq!(normalize("the-end"), "theend");
        // A separate article goes.
        assert_eq!(normalize("the end"), "end");
        assert_eq!(normalize("snake_case"), "snakecase");
        // Unicode: lowercased, accents kept, non-ASCII punctuation kept.
        assert_eq!(normalize("Café DÉJÀ Vu"), "café déjà vu");
        assert_eq!(normalize("“Quoted”"), "“quoted”");
        assert_eq!(normalize("ΣΊΣΥΦΟΣ"), "σίσυφος");
        // An article next to a non-ASCII letter is inside a word.
        assert_eq!(normalize("theé a"), "theé");
        assert_eq!(normalize("\tA\n the \u{a0}"), "");
        assert_eq!(normalize("1,000"), "1000");
    }

    #[test]
    fn exact_match_takes_any_golden_answer() {
        let gold = g(&["Albert Einstein", "Einstein"]);
        assert_eq!(exact_match("einstein.", &gold), 1.0);
        assert_eq!(exact_match("  The Albert Einstein ", &gold), 1.0);
        assert_eq!(exact_match("Albert", &gold), 0.0);
        assert_eq!(exact_match("", &gold), 0.0);
        assert_eq!(
            exact_match("the", &g(&["a"])),
            1.0,
            "both normalise to empty"
        );
        assert_eq!(
            cover_exact_match("It was Albert Einstein, 1905", &gold),
            1.0
        );
        assert_eq!(cover_exact_match("Newton", &gold), 0.0);
        // cover-EM is a plain substring test on normalised text (as in the reference).
        assert_eq!(cover_exact_match("einsteinium", &gold), 1.0);
    }

    #[test]
    fn f1_counts_token_overlap() {
        // pred tokens: [albert, einstein, physicist]; gold [albert, einstein]:
        // P = 2/3, R = 1, F1 = 0.8.
        let v = f1("Albert Einstein, physicist", &g(&["the Albert Einstein"]));
        assert!((v - 0.8).abs() < 1e-12, "{v}");
        // Best over golden answers: "Einstein" alone gives P = 1/3, R = 1 -> 0.5 < 0.8.
        let v = f1(
            "Albert Einstein physicist",
            &g(&["Einstein", "Albert Einstein"]),
        );
        assert!((v - 0.8).abs() < 1e-12);
        // Repeated tokens are counted with multiplicity: pred [new, new, york] vs [new, york]:
        // common 2, P = 2/3, R = 1 -> 0.8.
        assert!((f1("new new york", &g(&["New York"])) - 0.8).abs() < 1e-12);
        assert_eq!(f1("no", &g(&["no idea"])), 0.0);
        assert_eq!(f1("yes", &g(&["Yes."])), 1.0);
        assert_eq!(f1("", &g(&["x"])), 0.0);
    }

    #[test]
    fn containment_variants() {
        let gold = g(&["Paris"]);
        assert!(contains_verbatim("Doc 1(Title: \"Paris\") ...", &gold));
        assert!(!contains_verbatim("paris is lowercase here", &gold));
        assert!(contains_normalized("Lives in PARIS, France.", "paris"));
        assert!(!contains_normalized("A Parisian café", "Paris"));
        assert!(contains_normalized("The Nile river", "the Nile"));
        assert!(
            !contains_normalized("anything", "the"),
            "empty after normalisation"
        );
    }
}
