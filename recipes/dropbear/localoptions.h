/* axion's dropbear: key-only logins, host keys on the persistent data partition
 * (regenerated per clone by init), no X11, no agent forwarding. */
#define DROPBEAR_SVR_PASSWORD_AUTH 0
#define DROPBEAR_SVR_PAM_AUTH 0
#define DROPBEAR_SVR_AGENTFWD 0
#define DROPBEAR_X11FWD 0
#define DROPBEAR_DSS 0
#define DSS_PRIV_FILENAME "/var/lib/dropbear/dropbear_dss_host_key"
#define RSA_PRIV_FILENAME "/var/lib/dropbear/dropbear_rsa_host_key"
#define ECDSA_PRIV_FILENAME "/var/lib/dropbear/dropbear_ecdsa_host_key"
#define ED25519_PRIV_FILENAME "/var/lib/dropbear/dropbear_ed25519_host_key"
#define DEFAULT_PATH "/usr/sbin:/usr/bin:/sbin:/bin"
#define DEFAULT_ROOT_PATH "/usr/sbin:/usr/bin:/sbin:/bin"
