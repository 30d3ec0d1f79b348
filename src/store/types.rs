//! Domain enums in text columns: each is stored as its name and read back by parsing it, on
//! any backend (a name the code does not know is a deserialization error, never a guess).

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;

use crate::domain::{AuthType, HostKeyCheck, JobKind, JobStatus, RunStatus};

macro_rules! text_enum {
    ($($ty:ty),*) => {$(
        impl<DB> ToSql<Text, DB> for $ty
        where
            DB: Backend,
            str: ToSql<Text, DB>,
        {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
                self.as_str().to_sql(out)
            }
        }

        impl<DB> FromSql<Text, DB> for $ty
        where
            DB: Backend,
            String: FromSql<Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
                let name = String::from_sql(bytes)?;
                Ok(name.parse()?)
            }
        }
    )*};
}

text_enum!(JobStatus, JobKind, AuthType, HostKeyCheck, RunStatus);
