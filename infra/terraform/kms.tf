# One customer-managed key for everything stlake stores: lake bucket objects, EMR Serverless job
# logs, Athena query results and the training node's EBS volume. Principals get to use it through
# their IAM policies (the "Enable IAM policies" statement below delegates to the account), so the key
# policy itself names no role and never has to change when roles are added.
resource "aws_kms_key" "lake" {
  description             = "${var.name_prefix}: lake bucket, EMR job logs, Athena results, training EBS"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = var.kms_deletion_window_days

  # In a key policy "Resource" is always "*": it means "this key" (AWS requires exactly that form).
  # The account-admin statement lists the actions instead of kms:*, so no statement grants "*".
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministersKeyViaIAM"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
        Action = [
          "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
          "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource",
          "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion",
          "kms:RotateKeyOnDemand",
        ]
        Resource = "*"
      },
      {
        Sid       = "AccountUsesKeyViaIAM"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
        Action = [
          "kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey",
          "kms:CreateGrant", "kms:RetireGrant",
        ]
        Resource = "*"
      },
    ]
  })
}

resource "aws_kms_alias" "lake" {
  name          = "alias/${var.name_prefix}-lake"
  target_key_id = aws_kms_key.lake.key_id
}
