# shellcheck shell=bash
# Interop checks with the openssl CLI on asymmetric keys (sourced by run.sh, which
# provides check, fail, aws_kms and $W): openssl verifies ECDSA and RSA-PSS signatures
# made in the HSMs with the public key from get-public-key, openssl encrypts with
# OAEP-SHA-256 and the service decrypts, and openssl's ECDH agrees with
# derive-shared-secret; and the README's import walk-through: key material wrapped by
# openssl (RSA_AES_KEY_WRAP_SHA_1 and RSAES_OAEP_SHA_1) imported with the aws CLI, used,
# deleted, re-imported.
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

# o_import_params KEY ALG SPEC : get-parameters-for-import into $O/wrapping.der and
# $O/token.bin.
o_import_params() {
    aws_kms get-parameters-for-import --key-id "$1" --wrapping-algorithm "$2" \
        --wrapping-key-spec "$3" --output json >"$O/params.json"
    "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["PublicKey"])' "$O/params.json" |
        base64 -d >"$O/wrapping.der"
    "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["ImportToken"])' "$O/params.json" |
        base64 -d >"$O/token.bin"
}

# o_oaep_sha1 IN OUT : RSA-OAEP (SHA-1) under $O/wrapping.der.
o_oaep_sha1() {
    openssl pkeyutl -encrypt -pubin -keyform DER -inkey "$O/wrapping.der" -in "$1" -out "$2" \
        -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1
}

o_import() {
    local key state
    key="$(aws_kms create-key --origin EXTERNAL --query KeyMetadata.KeyId --output text)"
    state="$(aws_kms describe-key --key-id "$key" --query KeyMetadata.KeyState --output text)"
    [ "$state" = PendingImport ] || fail "new EXTERNAL key is $state"
    o_import_params "$key" RSA_AES_KEY_WRAP_SHA_1 RSA_4096
    openssl rand -out "$O/material.bin" 32
    openssl rand -out "$O/aes.bin" 32
    o_oaep_sha1 "$O/aes.bin" "$O/aes.wrapped"
    openssl enc -id-aes256-wrap-pad -K "$(xxd -p -c 64 "$O/aes.bin")" -iv A65959A6 \
        -in "$O/material.bin" -out "$O/material.wrapped"
    cat "$O/aes.wrapped" "$O/material.wrapped" >"$O/encrypted.bin"
    aws_kms import-key-material --key-id "$key" --encrypted-key-material "fileb://$O/encrypted.bin" \
        --import-token "fileb://$O/token.bin" --expiration-model KEY_MATERIAL_EXPIRES \
        --valid-to "$(date -u -d '+90 days' +%Y-%m-%dT%H:%M:%SZ)" >/dev/null
    state="$(aws_kms describe-key --key-id "$key" --query KeyMetadata.ExpirationModel --output text)"
    [ "$state" = KEY_MATERIAL_EXPIRES ] || fail "ExpirationModel is $state"
    printf 'imported secret' >"$O/secret"
    aws_kms encrypt --key-id "$key" --plaintext "fileb://$O/secret" \
        --query CiphertextBlob --output text | base64 -d >"$O/secret.enc"
    aws_kms delete-imported-key-material --key-id "$key" >/dev/null
    expect_error KMSInvalidStateException aws_kms decrypt --ciphertext-blob "fileb://$O/secret.enc"
    # Other material is refused; the same material (now RSAES_OAEP_SHA_1) restores the key.
    o_import_params "$key" RSAES_OAEP_SHA_1 RSA_2048
    openssl rand -out "$O/other.bin" 32
    o_oaep_sha1 "$O/other.bin" "$O/other.wrapped"
    expect_error IncorrectKeyMaterialException aws_kms import-key-material --key-id "$key" \
        --encrypted-key-material "fileb://$O/other.wrapped" --import-token "fileb://$O/token.bin" \
        --expiration-model KEY_MATERIAL_DOES_NOT_EXPIRE
    o_oaep_sha1 "$O/material.bin" "$O/material.oaep"
    aws_kms import-key-material --key-id "$key" --encrypted-key-material "fileb://$O/material.oaep" \
        --import-token "fileb://$O/token.bin" --expiration-model KEY_MATERIAL_DOES_NOT_EXPIRE >/dev/null
    aws_kms decrypt --ciphertext-blob "fileb://$O/secret.enc" \
        --query Plaintext --output text | base64 -d >"$O/secret.back"
    cmp "$O/secret" "$O/secret.back" || fail "the re-imported key decrypted wrongly"
    expect_error UnsupportedOperationException aws_kms get-parameters-for-import --key-id "$key" \
        --wrapping-algorithm RSAES_OAEP_SHA_256 --wrapping-key-spec RSA_2048
}

check "openssl: dgst -verify an ECDSA P-256 signature (and reject another message)" o_ecdsa
check "openssl: dgst -verify an ECDSA P-384 signature" o_ecdsa_p384
check "openssl: dgst -verify RSA-PSS (salt 32) and PKCS#1 v1.5 signatures" o_rsa_pss
check "openssl: pkeyutl OAEP-SHA-256 ciphertext decrypted by the service" o_rsa_oaep256
check "openssl: pkeyutl -derive agrees with derive-shared-secret" o_ecdh
check "openssl + cli: import key material (RSA_AES_KEY_WRAP_SHA_1, RSAES_OAEP_SHA_1), delete, re-import" o_import
