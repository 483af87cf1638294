//! Label sets as the tests compare them: owned `(key, value)` pairs, as
//! `heapprof::current_labels()` returns them.

/// `labels` without the automatic `thread` label.
pub fn without_thread(labels: Vec<(String, String)>) -> Vec<(String, String)> {
    labels.into_iter().filter(|(k, _)| k != "thread").collect()
}

/// Owned copies of `labels`.
pub fn pairs(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
