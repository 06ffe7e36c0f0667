# shellcheck shell=bash
# Interop checks with the openssl CLI on asymmetric keys (sourced by run.sh, which
# provides check, fail, aws_kms and $W): openssl verifies ECDSA and RSA-PSS signatures
# made in the HSMs with the public key from get-public-key, openssl encrypts with
# OAEP-SHA-256 and the service decrypts, and openssl's ECDH agrees with
# derive-shared-secret.
#
# The check functions (o_*) are called indirectly through `check`:
# shellcheck disable=SC2317,SC2154

O="$W/openssl"
mkdir -p "$O"

# o_new_key SPEC USAGE NAME : create a key, store its id in $O/NAME.id and its public
# key as PEM in $O/NAME.pem.
o_new_key() {
    aws_kms create-key --key-spec "$1" --key-usage "$2" \
        --query KeyMetadata.KeyId --output text >"$O/$3.id"
    aws_kms get-public-key --key-id "$(cat "$O/$3.id")" \
        --query PublicKey --output text | base64 -d >"$O/$3.der"
    openssl pkey -pubin -inform DER -in "$O/$3.der" -out "$O/$3.pem"
}

# o_sign NAME ALG FILE SIG : sign FILE (RAW) with the key NAME into SIG (binary).
o_sign() {
    aws_kms sign --key-id "$(cat "$O/$1.id")" --message "fileb://$3" \
        --message-type RAW --signing-algorithm "$2" \
        --query Signature --output text | base64 -d >"$4"
}

o_ecdsa() {
    o_new_key ECC_NIST_P256 SIGN_VERIFY ec
    head -c 3000 /dev/urandom >"$O/msg"
    o_sign ec ECDSA_SHA_256 "$O/msg" "$O/ec.sig"
    openssl dgst -sha256 -verify "$O/ec.pem" -signature "$O/ec.sig" "$O/msg"
    printf 'x' >>"$O/msg"
    if openssl dgst -sha256 -verify "$O/ec.pem" -signature "$O/ec.sig" "$O/msg"; then
        fail "openssl accepted the signature for another message"
    fi
}

o_ecdsa_p384() {
    o_new_key ECC_NIST_P384 SIGN_VERIFY ec384
    printf 'p384 message' >"$O/msg384"
    o_sign ec384 ECDSA_SHA_384 "$O/msg384" "$O/ec384.sig"
    openssl dgst -sha384 -verify "$O/ec384.pem" -signature "$O/ec384.sig" "$O/msg384"
}

o_rsa_pss() {
    o_new_key RSA_2048 SIGN_VERIFY rsa
    printf 'rsa-pss message' >"$O/rmsg"
    o_sign rsa RSASSA_PSS_SHA_256 "$O/rmsg" "$O/rsa.sig"
    openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 \
        -verify "$O/rsa.pem" -signature "$O/rsa.sig" "$O/rmsg"
    o_sign rsa RSASSA_PKCS1_V1_5_SHA_512 "$O/rmsg" "$O/rsa1.sig"
    openssl dgst -sha512 -verify "$O/rsa.pem" -signature "$O/rsa1.sig" "$O/rmsg"
}

o_rsa_oaep256() {
    o_new_key RSA_2048 ENCRYPT_DECRYPT enc
    head -c 190 /dev/urandom >"$O/plain"
    openssl pkeyutl -encrypt -pubin -inkey "$O/enc.pem" \
        -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256 \
        -in "$O/plain" -out "$O/ct"
    aws_kms decrypt --key-id "$(cat "$O/enc.id")" --ciphertext-blob "fileb://$O/ct" \
        --encryption-algorithm RSAES_OAEP_SHA_256 \
        --query Plaintext --output text | base64 -d >"$O/back"
    cmp "$O/plain" "$O/back" || fail "service decrypted openssl's OAEP-SHA-256 ciphertext wrongly"
}

o_ecdh() {
    o_new_key ECC_NIST_P256 KEY_AGREEMENT agree
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$O/mine.pem"
    openssl pkey -in "$O/mine.pem" -pubout -outform DER -out "$O/mine.der"
    openssl pkeyutl -derive -inkey "$O/mine.pem" -peerkey "$O/agree.pem" -out "$O/z.openssl"
    aws_kms derive-shared-secret --key-id "$(cat "$O/agree.id")" \
        --key-agreement-algorithm ECDH --public-key "fileb://$O/mine.der" \
        --query SharedSecret --output text | base64 -d >"$O/z.kms"
    cmp "$O/z.openssl" "$O/z.kms" || fail "shared secrets differ"
}

check "openssl: dgst -verify an ECDSA P-256 signature (and reject another message)" o_ecdsa
check "openssl: dgst -verify an ECDSA P-384 signature" o_ecdsa_p384
check "openssl: dgst -verify RSA-PSS (salt 32) and PKCS#1 v1.5 signatures" o_rsa_pss
check "openssl: pkeyutl OAEP-SHA-256 ciphertext decrypted by the service" o_rsa_oaep256
check "openssl: pkeyutl -derive agrees with derive-shared-secret" o_ecdh
