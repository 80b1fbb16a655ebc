//! Authentication and authorization as every request path does them (the Kubernetes API and
//! the registry): both read the watch cache, which follows this member's store a moment
//! behind, so a credential or a binding written just before a request is waited for.

use std::time::Duration;

use api::rbac::User;

use crate::state::ApiState;

/// The user a bearer token authenticates, if any.
pub async fn authenticated(st: &ApiState, token: &str) -> Option<User> {
    let user = st.auth.authenticate(token);
    if user.is_none() && token.starts_with("drover.") {
        // A signed token lives as long as its ServiceAccount, Node or pod, looked up in the
        // watch cache, which follows this member's store a moment behind: a Node made by the
        // request that issued the token must count.
        let head = st.store.engine().head().revision;
        if st.cache.revision() < head && st.cache.wait_for(head, Duration::from_secs(1)).await {
            return st.auth.authenticate(token);
        }
    }
    user
}

/// Whether RBAC allows `a` to `user`. RBAC is read from the watch cache, which follows this
/// member's store a moment behind: a binding written just before this request must still
/// count, so a refusal is asked again once the cache has caught up.
pub async fn allows_soon(st: &ApiState, user: &User, a: &api::rbac::Attributes<'_>) -> bool {
    if st.auth.allows_attributes(user, a) {
        return true;
    }
    let head = st.store.engine().head().revision;
    st.cache.wait_for(head, Duration::from_secs(1)).await && st.auth.allows_attributes(user, a)
}
