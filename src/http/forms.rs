//! Reading `multipart/form-data` forms (file uploads: licence keys, certificates, backups)
//! into memory, with a size cap, so handlers see plain fields.

use std::collections::HashMap;

use actix_multipart::Multipart;
use futures_util::TryStreamExt;

use super::HttpError;

/// The fields of one multipart form: text fields and uploaded files alike, by name.
pub struct MultipartForm {
    fields: HashMap<String, Vec<u8>>,
}

impl MultipartForm {
    /// Reads every field; refuses the form when all of it together exceeds `limit` bytes.
    pub async fn read(mut multipart: Multipart, limit: usize) -> Result<Self, HttpError> {
        let mut fields = HashMap::new();
        let mut total = 0usize;
        while let Some(mut field) = multipart
            .try_next()
            .await
            .map_err(|e| HttpError::BadRequest(format!("The upload could not be read: {e}")))?
        {
            let name = field.name().unwrap_or_default().to_string();
            let mut data = Vec::new();
            while let Some(chunk) = field
                .try_next()
                .await
                .map_err(|e| HttpError::BadRequest(format!("The upload could not be read: {e}")))?
            {
                total += chunk.len();
                if total > limit {
                    return Err(HttpError::BadRequest(format!(
                        "The upload is larger than {} MiB.",
                        limit / (1024 * 1024)
                    )));
                }
                data.extend_from_slice(&chunk);
            }
            fields.insert(name, data);
        }
        Ok(Self { fields })
    }

    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .get(name)
            .map(Vec::as_slice)
            .filter(|b| !b.is_empty())
    }

    /// A text field, or "" when absent.
    pub fn text(&self, name: &str) -> String {
        self.bytes(name)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    }

    /// The pasted text of `text_field`, or else the uploaded file `file_field` read as text.
    pub fn text_or_file(&self, text_field: &str, file_field: &str) -> String {
        let pasted = self.text(text_field);
        if pasted.trim().is_empty() {
            self.text(file_field)
        } else {
            pasted
        }
    }
}
